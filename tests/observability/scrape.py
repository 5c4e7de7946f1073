"""Reading /metrics the way Prometheus does."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    return sum(v for n, lbl, v in samples(text) if n == name and labels.items() <= lbl.items())


def has(text: str, name: str, **labels: str) -> bool:
    return any(n == name and labels.items() <= lbl.items() for n, lbl, _ in samples(text))
