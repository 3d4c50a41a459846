"""Read rawrt's /metrics as Prometheus would: an HTTP GET, parsed by prometheus-client's parser.

    figures = await scrape(port)                   # {(sample name, labels): value}
    figures.get("rawrt_deliveries_total", transport="websocket")

The parser is the library's (`text_string_to_metric_families`), not rawrt's code.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

from .clients import request

__all__ = ["Figures", "scrape"]


class Figures(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """Every sample of one scrape."""

    def get_value(self, name: str, default: float = 0.0, **labels: str) -> float:
        return self.get((name, frozenset(labels.items())), default)

    def names(self) -> set[str]:
        return {name for name, _ in self}


def parse(text: str) -> Figures:
    figures = Figures()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            figures[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return figures


async def scrape(port: int, headers: Sequence[tuple[str, str]] = ()) -> Figures:
    response = await request(port, "GET", "/metrics", headers=headers)
    assert response.status == 200, (response.status, response.body)
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse(response.body.decode())
