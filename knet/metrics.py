"""Prometheus text-format metrics and a tiny HTTP endpoint (/metrics, /healthz) for the daemons.

Standard library only: the daemons need a handful of counters, gauges and histograms, and a
health check whose answer they compute themselves.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{v}"'.replace("\n", " ") for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, registry: Registry, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self.lock = threading.Lock()
        registry.metrics.append(self)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self.lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        with self.lock:
            items = sorted(self.values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        with self.lock:
            self.values[labels] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, *a, buckets: Iterable[float] = DEFAULT_BUCKETS, **kw) -> None:
        super().__init__(*a, **kw)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list] = {}

    def observe(self, value: float, *labels: str) -> None:
        with self.lock:
            s = self.series.setdefault(labels, [[0] * len(self.buckets), 0.0, 0])
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                s[0][i] += 1
            s[1] += value
            s[2] += 1

    def render(self) -> list[str]:
        out = self.header()
        with self.lock:
            items = sorted((k, (list(v[0]), v[1], v[2])) for k, v in self.series.items())
        for labels, (counts, total, n) in items:
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                le = 'le="' + f"{bound:g}" + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.label_names, labels, inf)} {n}")
            out.append(f"{self.name}_sum{_labels(self.label_names, labels)} {total:g}")
            out.append(f"{self.name}_count{_labels(self.label_names, labels)} {n}")
        return out


class Collected(_Metric):
    """Families computed at scrape time by a callback returning exposition lines (for values
    read from the kernel on demand, as cAdvisor's are)."""

    def __init__(self, registry: Registry, collect: Callable[[], list[str]]) -> None:
        super().__init__(registry, "", "")
        self.collect = collect

    def render(self) -> list[str]:
        return self.collect()


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def collector(self, collect: Callable[[], list[str]]) -> Collected:
        return Collected(self, collect)

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(self, name, help_text, labels)

    def gauge(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(self, name, help_text, labels)

    def histogram(self, name: str, help_text: str, labels: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return Histogram(self, name, help_text, labels, buckets=buckets)

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics:
            lines += m.render()
        return "\n".join(lines) + "\n"


def serve(registry: Registry, address: str, health: Callable[[], tuple[bool, str]] | None = None,
          ) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on "host:port" from a daemon thread; returns the server."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                code, body, ctype = 200, registry.render(), "text/plain; version=0.0.4"
            elif self.path.split("?")[0] in ("/healthz", "/health", "/livez", "/readyz"):
                ok, why = health() if health else (True, "ok")
                code, body, ctype = (200 if ok else 503), why + "\n", "text/plain"
            else:
                code, body, ctype = 404, "not found\n", "text/plain"
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
