"""kproxy's metrics as a scraper reads them: kube-proxy's names (and only those under its prefix)
for each mode, parsed by prometheus_client's own parser, with kube-proxy's buckets."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kproxy.metrics import KUBE_PROXY_NAMES, MODE_NAMES, PROGRAMMING_BUCKETS, SYNC_BUCKETS, ProxyMetrics


def exposition(m: ProxyMetrics) -> str:
    data, _ = m.registry.exposition(None)
    return data.decode()


@pytest.mark.parametrize("mode", sorted(MODE_NAMES))
def test_every_mode_serves_kube_proxys_names(mode):
    m = ProxyMetrics(mode)
    m.observe_sync(0.02, True, 1700000000.0)
    families = {f.name + "_total" if f.type == "counter" else f.name: f
                for f in text_string_to_metric_families(exposition(m))}
    assert {n for n in families if n.startswith("kubeproxy_")} == set(KUBE_PROXY_NAMES) | set(MODE_NAMES[mode])
    assert families["kubeproxy_sync_proxy_rules_duration_seconds"].type == "histogram"
    assert families["kubeproxy_sync_proxy_rules_last_timestamp_seconds"].type == "gauge"
    buckets = [s.labels["le"] for s in families["kubeproxy_sync_full_proxy_rules_duration_seconds"].samples
               if s.name.endswith("_bucket")]
    assert buckets[:2] == ["0.001", "0.002"] and buckets[-2:] == ["16.384", "+Inf"]
    assert {s.labels.get("ip_family") for s in families["kubeproxy_sync_proxy_rules_duration_seconds"].samples} \
        == {"IPv4"}


def test_kube_proxys_buckets():
    assert SYNC_BUCKETS[0] == 0.001 and len(SYNC_BUCKETS) == 15 and SYNC_BUCKETS[-1] == pytest.approx(16.384)
    # component-base MergeBuckets: 0, 0.25, 0.5, 1..59, 60..115 by 5, 120..300 by 30
    assert PROGRAMMING_BUCKETS[:4] == (0.0, 0.25, 0.5, 1.0) and PROGRAMMING_BUCKETS[-1] == 300.0
    assert len(PROGRAMMING_BUCKETS) == 1 + 2 + 59 + 12 + 7
