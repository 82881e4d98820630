"""Helpers shared by the benchmarks: unique namespace prefixes, medians, output."""

from __future__ import annotations

import json
import secrets
import statistics
import sys
from collections.abc import Iterable


def unique_prefix(tag: str) -> str:
    return f"kb{tag}{secrets.token_hex(2)}"


def median_ms(samples: Iterable[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def percentile_ms(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return round(ordered[k] * 1000, 2)


def emit(rows: list[tuple[str, str]], summary: dict, as_json: bool) -> None:
    if as_json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
        return
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
