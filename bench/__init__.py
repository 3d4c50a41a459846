"""Benchmarks for rawrt against peer servers (see bench/harness and bench/peers)."""
