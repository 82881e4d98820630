"""kdns's metrics, served through `knet.metrics` (/metrics and /health).

The per-query numbers are plain ints and lists updated by the event loop thread (no locks on the
hot path); at scrape time one collector takes a snapshot *on the loop thread* (a thread hop from
the HTTP thread), so the sums of live cache entries and of evicted ones are consistent and the
counters never step backwards.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

from kdns.wire import RCODE_NAMES, type_name
from knet import metrics

BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
           2.5, 5.0)


class Latency:
    """A histogram accumulator without locks (one writer: the loop thread)."""

    def __init__(self) -> None:
        self.series: dict[str, list[Any]] = {}

    def observe(self, path: str, seconds: float, n: int = 1) -> None:
        s = self.series.get(path)
        if s is None:
            s = self.series[path] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
        s[0][bisect.bisect_left(BUCKETS, seconds)] += n
        s[1] += seconds * n
        s[2] += n


class Stats:
    def __init__(self) -> None:
        self.registry = metrics.Registry()
        self.queries: dict[tuple[int, int], int] = {}  # (qtype, rcode) answered off the cache
        self.latency = Latency()
        self.dropped: dict[str, int] = {}  # reason -> count
        self.truncated = 0
        self.tcp_connections = 0
        self.store_updates = self.registry.counter("kdns_store_updates_total",
                                                   "Cluster changes applied to the record store", ["kind"])
        self.source: Callable[[], dict[str, Any]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # The server's lock: its UDP threads update these numbers too (thread mode).
        self.lock: Any = contextlib.nullcontext()
        self.registry.metrics.append(_Collector(self))  # type: ignore[arg-type]

    def count(self, qtype: int, rcode: int) -> None:
        k = (qtype, rcode)
        self.queries[k] = self.queries.get(k, 0) + 1

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Everything the collector renders; runs on the loop thread."""
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.source() if self.source else {}
        queries = dict(self.queries)
        for k, v in snap.pop("cache_hits_by_type", {}).items():
            queries[k] = queries.get(k, 0) + v
        snap["queries"] = queries
        snap["latency"] = {p: ([*s[0]], s[1], s[2]) for p, s in self.latency.series.items()}
        snap["dropped"] = dict(self.dropped)
        snap["truncated"] = self.truncated
        snap["tcp_connections"] = self.tcp_connections
        return snap

    def snapshot_threadsafe(self, timeout: float = 2.0) -> dict[str, Any]:
        loop = self.loop
        if loop is None or not loop.is_running():
            return self.snapshot()
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(self.snapshot())
            except Exception as e:
                fut.set_exception(e)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout)


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


class _Collector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def render(self) -> list[str]:
        try:
            s = self.stats.snapshot_threadsafe()
        except Exception:
            return ["# kdns collector: snapshot failed"]
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])

        family("kdns_queries_total", "counter", "Queries answered, by question type and response code")
        agg: dict[tuple[str, str], int] = {}
        for (qtype, rcode), n in s["queries"].items():
            k = (type_name(qtype), RCODE_NAMES.get(rcode, str(rcode)))
            agg[k] = agg.get(k, 0) + n
        out += [f"kdns_queries_total{_labels(type=t, rcode=r)} {n}" for (t, r), n in sorted(agg.items())]

        family("kdns_request_duration_seconds", "histogram",
               "Time from receiving a query to sending the answer, by path (cache: the precomputed fast "
               "path, averaged per receive batch; local: built from the record store; forward: upstream)")
        for path, (counts, total, n) in sorted(s["latency"].items()):
            running = 0
            for bound, c in zip(BUCKETS, counts, strict=False):
                running += c
                out.append(f"kdns_request_duration_seconds_bucket{_labels(path=path, le=f'{bound:g}')} {running}")
            out.append(f"kdns_request_duration_seconds_bucket{_labels(path=path, le='+Inf')} {n}")
            out.append(f"kdns_request_duration_seconds_sum{_labels(path=path)} {total:.9g}")
            out.append(f"kdns_request_duration_seconds_count{_labels(path=path)} {n}")

        family("kdns_cache_hits_total", "counter", "Answers served from a cache")
        family("kdns_cache_misses_total", "counter", "Lookups that missed a cache")
        for cache in ("answer", "forward"):
            out.append(f"kdns_cache_hits_total{_labels(cache=cache)} {s.get(cache + '_hits', 0)}")
            out.append(f"kdns_cache_misses_total{_labels(cache=cache)} {s.get(cache + '_misses', 0)}")
        family("kdns_cache_entries", "gauge", "Entries in a cache")
        for cache in ("answer", "forward"):
            out.append(f"kdns_cache_entries{_labels(cache=cache)} {s.get(cache + '_entries', 0)}")
        family("kdns_cache_invalidations_total", "counter", "Answer cache entries dropped by cluster changes")
        out.append(f"kdns_cache_invalidations_total {s.get('invalidations', 0)}")
        family("kdns_cache_refreshed_total", "counter",
               "Invalidated answers recomputed before the next query asked for them")
        out.append(f"kdns_cache_refreshed_total {s.get('refreshed', 0)}")

        family("kdns_forward_requests_total", "counter", "Upstream queries, by upstream and outcome")
        for (up, what), n in sorted(s.get("forward", {}).items()):
            out.append(f"kdns_forward_requests_total{_labels(upstream=up, result=what)} {n}")
        family("kdns_dropped_total", "counter", "Packets not answered, by reason")
        out += [f"kdns_dropped_total{_labels(reason=r)} {n}" for r, n in sorted(s["dropped"].items())]
        family("kdns_truncated_total", "counter", "UDP answers sent truncated (TC) for the client to retry over TCP")
        out.append(f"kdns_truncated_total {s['truncated']}")
        family("kdns_tcp_connections_total", "counter", "TCP connections accepted")
        out.append(f"kdns_tcp_connections_total {s['tcp_connections']}")
        family("kdns_records", "gauge", "Names in the record store")
        out.append(f"kdns_records {s.get('names', 0)}")
        return out
