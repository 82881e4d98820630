"""Helpers shared by the benchmarks: unique namespace prefixes, medians, output."""

from __future__ import annotations

import json
import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its /proc stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)
