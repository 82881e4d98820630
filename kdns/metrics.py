"""kdns's metrics under CoreDNS's names and labels, exposed through prometheus_client.

The serving thread counts in plain ints and dicts (no locks, no prometheus_client objects on the
per-query path: a labelled Counter.inc costs a lock and a dict lookup per call). At scrape time
`Collector.collect()` takes one snapshot on the serving thread (so the numbers are consistent
with each other and never step back) and turns it into metric families:

    coredns_dns_requests_total{server,zone,view,proto,family,type}
    coredns_dns_responses_total{server,zone,view,rcode,plugin}
    coredns_dns_request_duration_seconds{server,zone,view}            (histogram)
    coredns_dns_do_requests_total{server,zone,view}
    coredns_cache_entries{server,type,zones,view}      coredns_cache_hits_total{server,type,zones,view}
    coredns_cache_misses_total{server,zones,view}      coredns_cache_requests_total{server,zones,view}
    coredns_cache_prefetch_total / _served_stale_total{server,zones,view}
    coredns_cache_evictions_total{server,type,zones,view}
    coredns_forward_requests_total{to}  coredns_forward_responses_total{to,rcode}   (deprecated in
        CoreDNS 1.11 but still what dashboards query)
    coredns_proxy_request_duration_seconds{proxy_name,to,rcode}     (histogram)
    coredns_proxy_healthcheck_failures_total{proxy_name,to}
    coredns_forward_healthcheck_broken_total  coredns_forward_max_concurrent_rejects_total
    coredns_autopath_success_total{server}   coredns_reload_failed_total   coredns_panics_total
    coredns_plugin_enabled{server,zone,view,name}   coredns_build_info{version,revision,goversion}

`server` is `dns://[ADDRESS]:PORT` as CoreDNS writes it, `zone` the server block's zone (`.`),
`view` empty (kdns has no views), `type` the question type or `other`, `plugin` the one that
wrote the answer (kubernetes, cache, forward, autopath; empty for errors the server answered).
kdns's own numbers (answer-cache invalidations, records, ...) are `kdns_*`. Process and Python
runtime metrics come from prometheus_client's standard collectors.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from kdns.forward import DURATION_BUCKETS
from kdns.wire import RCODE_NAMES

# CoreDNS's metrics report these question types by name, every other one as "other".
MONITORED_TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 48: "DNSKEY", 43: "DS", 15: "MX", 50: "NSEC3", 47: "NSEC",
                   2: "NS", 12: "PTR", 46: "RRSIG", 6: "SOA", 33: "SRV", 16: "TXT", 65: "HTTPS", 64: "SVCB",
                   251: "IXFR", 252: "AXFR", 255: "ANY"}
VERSION = "1.11.1-kdns"  # the CoreDNS behaviour kdns follows (metric names, labels, plugin syntax)


def qtype_label(qtype: int) -> str:
    return MONITORED_TYPES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


class Histogram:
    """Buckets, sum and count, updated by one thread without locks."""

    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float, n: int = 1) -> None:
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += n
        self.total += seconds * n
        self.n += n

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, c in zip(DURATION_BUCKETS, self.counts, strict=False):
            running += c
            out.append((f"{bound:g}", running))
        out.append(("+Inf", self.n))
        return out


@dataclass
class Stats:
    """Per-query counters, written by the serving thread only."""

    # (listener, zone, proto, qtype, rcode, plugin) -> answers not served by the answer cache's
    # fast path (those are counted on the cache entries themselves)
    answered: dict[tuple[int, str, str, int, int, str], int] = field(default_factory=dict)
    durations: dict[tuple[int, str], Histogram] = field(default_factory=dict)  # (listener, zone)
    do_requests: dict[tuple[int, str], int] = field(default_factory=dict)
    autopath: dict[int, int] = field(default_factory=dict)  # listener -> successful autopaths
    dropped: int = 0
    truncated: int = 0
    tcp_connections: int = 0
    panics: int = 0
    reload_failed: int = 0
    store_updates: dict[str, int] = field(default_factory=dict)  # written by the loop thread

    def answer(self, listener: int, zone: str, proto: str, qtype: int, rcode: int, plugin: str) -> None:
        k = (listener, zone, proto, qtype, rcode, plugin)
        self.answered[k] = self.answered.get(k, 0) + 1

    def observe(self, listener: int, zone: str, seconds: float, n: int = 1) -> None:
        h = self.durations.get((listener, zone))
        if h is None:
            h = self.durations[(listener, zone)] = Histogram()
        h.observe(seconds, n)


class Collector:
    """prometheus_client custom collector over a snapshot function (the server's)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # unchecked: families depend on the configuration

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        servers: list[str] = s["servers"]  # by listener index
        families: list[str] = s["families"]

        def srv(i: int) -> str:
            return servers[i] if i < len(servers) else "dns://"

        yield _gauge("coredns_build_info", "A metric with a constant '1' value labeled by version, revision, "
                     "and goversion from which CoreDNS was built.", ["version", "revision", "goversion"],
                     [((VERSION, "kdns", f"python{platform.python_version()}"), 1)])
        yield _gauge("coredns_plugin_enabled", "A metric that indicates whether a plugin is enabled on per server "
                     "and zone basis.", ["server", "zone", "view", "name"],
                     [((server, zone, "", name), 1) for server, zone, name in s["plugins"]])

        requests: dict[tuple, int] = {}
        responses: dict[tuple, int] = {}
        for (li, zone, proto, qtype, rcode, plugin), n in s["answered"].items():
            family = families[li] if li < len(families) else "1"
            _add(requests, (srv(li), zone, "", proto, family, qtype_label(qtype)), n)
            _add(responses, (srv(li), zone, "", rcode_label(rcode), plugin), n)
        if s["dropped"]:
            _add(requests, (srv(0), "dropped", "", "udp", families[0] if families else "1", "other"), s["dropped"])
        yield _counter("coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol and family.",
                       ["server", "zone", "view", "proto", "family", "type"], requests.items())
        yield _counter("coredns_dns_responses_total", "Counter of response status codes.",
                       ["server", "zone", "view", "rcode", "plugin"], responses.items())
        hist = HistogramMetricFamily("coredns_dns_request_duration_seconds",
                                     "Histogram of the time (in seconds) each request took per zone.",
                                     labels=["server", "zone", "view"])
        for (li, zone), h in sorted(s["durations"].items()):
            hist.add_metric([srv(li), zone, ""], h.buckets(), h.total)
        yield hist
        yield _counter("coredns_dns_do_requests_total", "Counter of DNS requests with DO bit set per zone.",
                       ["server", "zone", "view"], [((srv(li), zone, ""), n) for (li, zone), n in s["do"].items()])

        caches = s["caches"]  # [(server, zones, ForwardCache numbers)]
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                    labels=["server", "type", "zones", "view"])
        hits = CounterMetricFamily("coredns_cache_hits_total", "The count of cache hits.",
                                   labels=["server", "type", "zones", "view"])
        evictions = CounterMetricFamily("coredns_cache_evictions_total", "The count of cache evictions.",
                                        labels=["server", "type", "zones", "view"])
        per_cache = {name: CounterMetricFamily(f"coredns_cache_{name}_total", help_text,
                                               labels=["server", "zones", "view"])
                     for name, help_text in (("misses", "The count of cache misses. Deprecated, derive misses from "
                                              "cache hits/requests counters."),
                                             ("requests", "The count of cache requests."),
                                             ("prefetch", "The number of times the cache has prefetched a cached "
                                              "item."),
                                             ("served_stale", "The number of requests served from stale cache "
                                              "entries."))}
        for server, zones, c in caches:
            for kind in ("success", "denial"):
                entries.add_metric([server, kind, zones, ""], c["entries"][kind])
                hits.add_metric([server, kind, zones, ""], c["hits"][kind])
                evictions.add_metric([server, kind, zones, ""], c["evictions"][kind])
            for name, fam in per_cache.items():
                fam.add_metric([server, zones, ""], c[name])
        yield entries
        yield hits
        yield evictions
        yield from per_cache.values()

        upstreams = s["upstreams"]  # label -> UpstreamStats
        yield _counter("coredns_forward_requests_total", "Counter of requests made per upstream.", ["to"],
                       [((to, ), u.requests) for to, u in sorted(upstreams.items())])
        yield _counter("coredns_forward_responses_total", "Counter of responses received per upstream.",
                       ["to", "rcode"], [((to, rcode_label(rc)), v[2]) for to, u in sorted(upstreams.items())
                                         for rc, v in sorted(u.responses.items())])
        proxy = HistogramMetricFamily("coredns_proxy_request_duration_seconds", "Histogram of the time each request "
                                      "took.", labels=["proxy_name", "to", "rcode"])
        for to, u in sorted(upstreams.items()):
            for rc, (counts, total, _) in sorted(u.responses.items()):
                running, buckets = 0, []
                for bound, c in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
                    running += c
                    buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
                proxy.add_metric(["forward", to, rcode_label(rc)], buckets, total)
        yield proxy
        yield _counter("coredns_proxy_healthcheck_failures_total", "Counter of the number of failed healthchecks.",
                       ["proxy_name", "to"], [(("forward", to), u.healthcheck_failures)
                                              for to, u in sorted(upstreams.items())])
        yield _counter("coredns_forward_healthcheck_broken_total", "Counter of the number of complete failures of "
                       "the healthchecks.", [], [((), s["healthcheck_broken"])])
        yield _counter("coredns_forward_max_concurrent_rejects_total", "Counter of the number of queries rejected "
                       "because the concurrent queries were at maximum.", [], [((), s["max_concurrent_rejects"])])
        yield _counter("coredns_autopath_success_total", "Counter of requests that did autopath.", ["server"],
                       [((srv(li),), n) for li, n in sorted(s["autopath"].items())])
        yield _counter("coredns_reload_failed_total", "Counter of the number of failed reload attempts.", [],
                       [((), s["reload_failed"])])
        yield _counter("coredns_panics_total", "A metrics that counts the number of panics.", [], [((), s["panics"])])

        yield _counter("kdns_cache_invalidations_total", "Answer cache entries dropped by cluster changes.", [],
                       [((), s["invalidations"])])
        yield _counter("kdns_cache_refreshed_total", "Invalidated answers recomputed before the next query asked "
                       "for them.", [], [((), s["refreshed"])])
        yield _gauge("kdns_answer_cache_entries", "Precomputed answers of the UDP fast path.", [],
                     [((), s["answer_entries"])])
        yield _gauge("kdns_records", "Names in the cluster record store.", [], [((), s["names"])])
        yield _counter("kdns_store_updates_total", "Cluster changes applied to the record store.", ["kind"],
                       [((k,), n) for k, n in sorted(s["store_updates"].items())])
        yield _counter("kdns_truncated_total", "UDP answers sent truncated (TC) for the client to retry over TCP.",
                       [], [((), s["truncated"])])
        yield _counter("kdns_tcp_connections_total", "TCP connections accepted.", [], [((), s["tcp_connections"])])


def _add(d: dict, k: tuple, n: int) -> None:
    d[k] = d.get(k, 0) + n


def _counter(name: str, help_text: str, labels: list[str], values: Any) -> CounterMetricFamily:
    fam = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
    for lv, v in values:
        fam.add_metric(list(lv), v)
    return fam


def _gauge(name: str, help_text: str, labels: list[str], values: Any) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, help_text, labels=labels)
    for lv, v in values:
        fam.add_metric(list(lv), v)
    return fam


def registry(collector: Collector) -> CollectorRegistry:
    """kdns's registry: its collector, and the process / Python runtime ones."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg
