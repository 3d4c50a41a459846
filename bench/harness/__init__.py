"""The bench harness: starts servers and the C load generator, collects
medians, writes RESULTS.md and results.png.  Entry point: python -m bench."""
