"""A /metrics text exposition as tests read it: parsed by prometheus_client's own parser (label
order and number formatting are the exposition's business, not the test's)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, label set) -> value for every sample of the exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample (None when the exposition lacks it)."""
    return samples(text).get((name, frozenset(labels.items())))
