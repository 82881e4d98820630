"""The daemons' metrics: a small counter/gauge/histogram API, exposed by prometheus_client, and a
tiny HTTP endpoint (/metrics, /healthz).

    reg = Registry()                      # process_* and python_* metrics included
    syncs = reg.histogram("kubeproxy_sync_proxy_rules_duration_seconds", "...", ["mode"])
    syncs.observe(0.012, "iptables")
    reg.register(MyCollector())           # anything with collect() -> prometheus_client metric families
    serve(reg, "127.0.0.1:10249", health)

Why our own metric classes in front of prometheus_client's: the daemons update them from hot
paths with positional label values (`inc(1, mode)`, one dict update under one lock, no child
object per label set), and a few read or fill their series in bulk (netpolicy's drop counters,
ingress's batched histogram). At scrape time they are turned into prometheus_client metric
families, so the text (and OpenMetrics, when a scraper asks for it) is prometheus_client's: label
values escaped, names checked, process and runtime metrics alongside.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
log = logging.getLogger("knet.metrics")


class Collector(Protocol):
    """What `Registry.register` takes: prometheus_client's collector interface."""

    def collect(self) -> Iterable[Metric]: ...


class _Metric:
    kind = ""

    def __init__(self, registry: Registry, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self.lock = threading.Lock()
        registry.metrics.append(self)

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def render(self) -> list[str]:
        """The exposition lines of this metric (each kind renders its own)."""
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self.lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        return CounterMetricFamily(self.name, self.help, labels=self.label_names)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self.lock:
            items = sorted(self.values.items())
        for labels, value in items:
            family.add_metric([str(v) for v in labels], value)
        yield family


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        with self.lock:
            self.values[labels] = value

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help, labels=self.label_names)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, *a: Any, buckets: Iterable[float] = DEFAULT_BUCKETS, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.buckets = tuple(sorted(buckets))
        # labels -> [per-bucket counts (not cumulative; above the last bound: only in the count), sum, count]
        self.series: dict[tuple[str, ...], list] = {}

    def observe(self, value: float, *labels: str) -> None:
        with self.lock:
            s = self.series.setdefault(labels, [[0] * len(self.buckets), 0.0, 0])
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                s[0][i] += 1
            s[1] += value
            s[2] += 1

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.help, labels=self.label_names)
        with self.lock:
            items = sorted((k, (list(v[0]), v[1], v[2])) for k, v in self.series.items())
        for labels, (counts, total, n) in items:
            running, cumulative = 0, []
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                cumulative.append((_le(bound), running))
            cumulative.append(("+Inf", n))
            family.add_metric([str(v) for v in labels], cumulative, total)
        yield family


def _le(bound: float) -> str:
    return f"{bound:g}"


class _TextCollector:
    """An object with `render() -> list[str]` (exposition lines; the pre-prometheus_client collector
    interface, kdns's until it moves to `register()`), parsed into metric families."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        text = "\n".join(self.source.render()) + "\n"
        try:
            yield from list(text_string_to_metric_families(text))
        except ValueError as e:
            log.warning("collector output skipped: not valid exposition text",
                        extra={"collector": type(self.source).__name__, "error": str(e)})


class _Bridge:
    """Everything in `Registry.metrics`, for prometheus_client's registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for m in list(self.registry.metrics):
            if hasattr(m, "collect"):
                yield from m.collect()
            else:
                yield from _TextCollector(m).collect()


class Registry:
    def __init__(self, process_metrics: bool = True) -> None:
        self.metrics: list[Any] = []  # ours, in registration order (plus legacy render() collectors)
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.prometheus.register(_Bridge(self))
        if process_metrics:
            # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...;
            # python_info; python_gc_*: what every Prometheus client exposes by default.
            ProcessCollector(registry=self.prometheus)
            PlatformCollector(registry=self.prometheus)
            GCCollector(registry=self.prometheus)

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(self, name, help_text, labels)

    def gauge(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(self, name, help_text, labels)

    def histogram(self, name: str, help_text: str, labels: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return Histogram(self, name, help_text, labels, buckets=buckets)

    def register(self, collector: Collector) -> None:
        """A custom collector: `collect()` yields prometheus_client metric families (e.g.
        `prometheus_client.core.CounterMetricFamily`), called on every scrape from the HTTP thread."""
        self.prometheus.register(collector)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type): Prometheus text 0.0.4, or OpenMetrics when `accept` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.prometheus), content_type

    def render(self) -> str:
        """The Prometheus text exposition."""
        return self.exposition()[0].decode()


Answer = Callable[[str, Any], tuple[int, bytes, str]]  # (path, request headers) -> (code, body, content type)


def serve_http(address: str, answer: Answer, name: str = "http") -> ThreadingHTTPServer:
    """A small GET-only HTTP server on "host:port" (or "[v6]:port") from a daemon thread: every
    request is answered by `answer`. The metrics endpoint below, and the daemons' other small
    endpoints (kproxy's healthz and health check ports), are this."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, data, ctype = answer(self.path.split("?")[0], self.headers)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            if ctype.startswith("application/json"):
                self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def serve(registry: Registry, address: str, health: Callable[[], tuple[bool, str]] | None = None,
          ) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on "host:port" from a daemon thread; returns the server."""

    def answer(path: str, headers: Any) -> tuple[int, bytes, str]:
        if path == "/metrics":
            data, ctype = registry.exposition(headers.get("Accept"))
            return 200, data, ctype
        if path in ("/healthz", "/health", "/livez", "/readyz"):
            ok, why = health() if health else (True, "ok")
            return (200 if ok else 503), (why + "\n").encode(), "text/plain; charset=utf-8"
        return 404, b"not found\n", "text/plain; charset=utf-8"

    return serve_http(address, answer, "metrics")
