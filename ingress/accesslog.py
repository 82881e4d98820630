"""nginx's access log -> Prometheus metrics (requests by ingress/host/status, upstream latency
histogram).

The format is five tab-separated, JSON-escaped fields rather than a JSON object: a JSON object
costs nginx more bytes per request and the reader a dict per line (json.loads in batches measured
~2.7 us per request, the split ~1.5 us); the controller shares the CPU with nginx.

Why the access log rather than stub_status: stub_status only counts connections and requests in
total; the per-Ingress, per-host, per-status breakdown exists only per request. nginx writes the
log through a 64 KiB buffer flushed every second (cheap on the data path); the controller reads
the new bytes every second. The host label is the rule host that matched (`*.example.com`, `_`
for the default server), never the client's Host header, so clients cannot blow up the number of
series. Rotation keeps the file small: past `max_bytes` it is renamed, nginx is told to reopen
(SIGUSR1), and the renamed file is read to its end and removed.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

from knet import metrics

log = logging.getLogger("knet.ingress.accesslog")

# The log line: these variables, tab-separated, JSON-escaped by nginx (escape=json turns tabs and
# newlines inside values into \t and \n, so a raw tab or newline is always a separator).
FIELDS = ("$knet_ingress", "$knet_host", "$knet_service", "$status", "$upstream_response_time")
LOG_FORMAT = "\\t".join(FIELDS)  # as written in nginx.conf ("\t" in a quoted string is a tab)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BatchHistogram(metrics.Histogram):
    """knet.metrics' histogram plus `observe_many`: one lock and one series lookup per batch
    instead of per request (same exposition; relies on the base class's series layout)."""

    def observe_many(self, values: list[float], *labels: str) -> None:
        buckets, n = self.buckets, len(self.buckets)
        with self.lock:
            s = self.series.setdefault(labels, [[0] * n, 0.0, 0])
            counts = s[0]
            for v in values:
                i = bisect.bisect_left(buckets, v)
                if i < n:
                    counts[i] += 1
            s[1] += sum(values)
            s[2] += len(values)


class RequestMetrics:
    def __init__(self, registry: metrics.Registry) -> None:
        self.requests = registry.counter("knet_ingress_requests_total", "Requests answered, by Ingress, rule host and "
                                         "status", ["ingress", "host", "status"])
        self.upstream_latency = BatchHistogram(
            registry, "knet_ingress_upstream_latency_seconds", "Time spent waiting for backends (sum over retries)",
            ["ingress", "service"], buckets=LATENCY_BUCKETS)
        self.bad_lines = registry.counter("knet_ingress_access_log_unparsed_total", "Access log lines not understood")

    def observe(self, data: bytes) -> None:
        """A batch of complete log lines (tab-separated: ingress, host, service, status,
        upstream_response_time). Lines are counted per label set first, and each series is
        updated once per batch: the daemon shares the machine with nginx, and per-line metric
        updates would cost it microseconds per proxied request."""
        counts: Counter[tuple[bytes, bytes, bytes]] = Counter()
        latencies: dict[tuple[bytes, bytes], list[float]] = {}
        bad = 0
        for line in data.split(b"\n"):
            fields = line.split(b"\t")
            if len(fields) != len(FIELDS):
                bad += bool(line.strip())
                continue
            ingress, host, service, status, urt = fields
            counts[(ingress, host, status)] += 1
            if urt and urt != b"-":
                try:
                    seconds: float | None = float(urt)   # the common case: one attempt
                except ValueError:
                    seconds = upstream_seconds(urt.decode(errors="replace"))
                if seconds is not None:
                    key = (ingress, service)
                    values = latencies.get(key)
                    if values is None:
                        latencies[key] = values = []
                    values.append(seconds)
        if bad:
            self.bad_lines.inc(bad)
        for (ingress, host, status), n in counts.items():
            self.requests.inc(n, _label(ingress), _label(host), _label(status))
        for (ingress, service), values in latencies.items():
            self.upstream_latency.observe_many(values, _label(ingress), _label(service))


def _label(value: bytes) -> str:
    return value.decode(errors="replace") or "-"


def upstream_seconds(value: str) -> float | None:
    """$upstream_response_time: "0.004", "0.002, 0.003" (retries), "0.001 : 0.002" (internal
    redirects) or "-"/"" (no upstream) -> the total, or None."""
    total, seen = 0.0, False
    for part in value.replace(":", ",").split(","):
        part = part.strip()
        if part and part != "-":
            try:
                total += float(part)
                seen = True
            except ValueError:
                continue
    return total if seen else None


class AccessLogReader:
    """Feeds the complete lines nginx appended since the last `poll` to `sink`, as one batch."""

    def __init__(self, path: str, sink: Callable[[bytes], None], reopen: Callable[[], None] | None = None,
                 max_bytes: int = 64 << 20) -> None:
        self.path = path
        self.rotated = path + ".1"
        self.sink = sink
        self.reopen = reopen
        self.max_bytes = max_bytes
        self.rotated_offset = 0
        self.rotated_at = 0.0
        # Lines written before we started belong to an earlier run: skip them.
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def _read(self, path: str, offset: int) -> int:
        """Consume whole lines from `offset`; returns the offset after the last complete line (an
        unfinished line is read again, whole, next time)."""
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n")
        if end < 0:
            return offset
        self.sink(data[:end])
        return offset + end + 1

    def run(self, stop: threading.Event, interval: float = 1.0, nice: int = 10) -> None:
        """Poll every `interval` seconds until `stop` is set (a thread of its own). The thread
        runs at a lower priority: per-request metrics can wait a moment, the data plane it shares
        the CPU with cannot."""
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)  # this thread only (Linux)
        while not stop.wait(interval):
            try:
                self.poll()
            except Exception:
                log.exception("reading the access log failed")
        self.poll()

    def poll(self) -> None:
        if self.rotated_at:
            # nginx's workers reopen the log asynchronously; until the grace period is over, lines
            # may still land in the renamed file.
            self.rotated_offset = self._read(self.rotated, self.rotated_offset)
            if time.monotonic() - self.rotated_at > 3.0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.rotated)
                self.rotated_at = 0.0
        self.offset = self._read(self.path, self.offset)
        if self.reopen and not self.rotated_at and self.offset > self.max_bytes:
            os.replace(self.path, self.rotated)
            self.rotated_offset, self.offset, self.rotated_at = self.offset, 0, time.monotonic()
            self.reopen()
