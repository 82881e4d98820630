"""knet.metrics on prometheus_client: the daemons' small API, scraped over HTTP and parsed back with
prometheus_client's own parser; label values that used to break the text; custom collectors."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from knet import metrics
from tests.promtext import samples, value

NASTY = ['say "hi"', "back\\slash", "two\nlines", "a,b=c}", "ünïcode", ""]


def _scrape(registry: metrics.Registry, accept: str | None = None) -> tuple[str, str]:
    server = metrics.serve(registry, "127.0.0.1:0", lambda: (True, "ok"))
    try:
        port = server.server_address[1]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode(), r.headers["Content-Type"]
    finally:
        server.shutdown()
        server.server_close()


def test_api_scraped_and_parsed():
    reg = metrics.Registry()
    c = reg.counter("knet_things_total", "Things", ["kind"])
    g = reg.gauge("knet_level", "Level")
    h = reg.histogram("knet_sync_duration_seconds", "Syncs", ["mode"], buckets=(0.1, 1.0))
    c.inc(1, "a")
    c.inc(2.5, "a")
    g.set(7)
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v, "full")
    text, ctype = _scrape(reg)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert value(text, "knet_things_total", kind="a") == 3.5
    assert value(text, "knet_level") == 7
    assert value(text, "knet_sync_duration_seconds_bucket", mode="full", le="0.1") == 2  # le is inclusive
    assert value(text, "knet_sync_duration_seconds_bucket", mode="full", le="1") == 3  # as Go clients write it
    assert value(text, "knet_sync_duration_seconds_bucket", mode="full", le="+Inf") == 4
    assert value(text, "knet_sync_duration_seconds_count", mode="full") == 4
    assert value(text, "knet_sync_duration_seconds_sum", mode="full") == pytest.approx(3.65)
    # What every Prometheus client serves: process and runtime metrics.
    names = {name for name, _ in samples(text)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names


@pytest.mark.parametrize("label", NASTY)
def test_nasty_label_values_round_trip(label):
    reg = metrics.Registry(process_metrics=False)
    reg.counter("knet_requests_total", "Requests", ["host", "path"]).inc(1, label, "/")
    text, _ = _scrape(reg)
    assert value(text, "knet_requests_total", host=label, path="/") == 1


def test_openmetrics_when_asked():
    reg = metrics.Registry(process_metrics=False)
    reg.counter("knet_requests_total", "Requests", ["host"]).inc(1, 'x"y')
    text, ctype = _scrape(reg, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    fams = {f.name: f for f in parse_openmetrics(text)}
    assert fams["knet_requests"].samples[0].labels == {"host": 'x"y'}


def test_custom_collector_and_legacy_text_collector():
    class Queries:
        def collect(self):
            fam = CounterMetricFamily("coredns_dns_requests_total", "Requests", labels=["server", "type"])
            fam.add_metric(["dns://:53", "A"], 5)
            yield fam

    class Legacy:  # render() -> exposition lines (the interface before prometheus_client)
        def render(self):
            return ["# HELP old_total Old", "# TYPE old_total counter", 'old_total{a="b"} 2']

    reg = metrics.Registry(process_metrics=False)
    reg.register(Queries())
    reg.metrics.append(Legacy())
    text = reg.render()
    assert value(text, "coredns_dns_requests_total", server="dns://:53", type="A") == 5
    assert value(text, "old_total", a="b") == 2


def test_health_and_not_found():
    reg = metrics.Registry(process_metrics=False)
    server = metrics.serve(reg, "127.0.0.1:0", lambda: (False, "not synced yet"))
    try:
        port = server.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert e.value.code == 503 and e.value.read() == b"not synced yet\n"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
