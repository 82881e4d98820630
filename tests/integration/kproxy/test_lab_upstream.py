"""Upstream kube-proxy as the lab's service proxy (`knet lab up --proxy-mode kube-proxy-iptables`):
the core assertions of test_lab_modes.py, unchanged, with kube-proxy (.anchors/bin, built by
scripts/install-anchors) in kproxy's place on every node of a 3-node lab.

The same test functions run here against this module's `slab` (pytest collects them from this
module's namespace and gives them its fixture): ClusterIP from pods on two nodes to all three
backends, NodePort on every node from outside, ClientIP affinity, a Service without endpoints
refused at once, and cluster DNS (kdns) through kube-dns's ClusterIP. Plus what only kube-proxy
needs checking: it is alive and serving its metrics in the node, and the conntrack sysctls it sets
are the node namespace's, never the root's.

One upstream mode per run by default (iptables; a lab per mode costs about a minute):
KNET_TEST_UPSTREAM_PROXY_MODES=kube-proxy-iptables,kube-proxy-nftables runs both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from knet_testing import anchors
from lab.bringup import kube_proxy
from tests.integration.kproxy import test_lab_modes as modes

pytestmark = pytest.mark.integration
MODES = [m for m in os.environ.get("KNET_TEST_UPSTREAM_PROXY_MODES", "kube-proxy-iptables").split(",") if m]
# The conntrack sysctls kube-proxy sets (lab.bringup.kube_proxy.configuration): per network namespace.
CONNTRACK = {"nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600}
ROOT_BEFORE: dict[str, dict[str, str]] = {}  # mode -> the root namespace's values before its lab


def root_conntrack() -> dict[str, str]:
    """The root namespace's values (read only)."""
    out = {}
    for name in CONNTRACK:
        with open(f"/proc/sys/net/netfilter/{name}") as f:
            out[name] = f.read().strip()
    return out


@pytest.fixture(scope="module", params=MODES)
def slab(request: pytest.FixtureRequest) -> Iterator[modes.ServiceLab]:
    if request.param not in kube_proxy.MODES:
        pytest.fail(f"KNET_TEST_UPSTREAM_PROXY_MODES: {request.param!r} is not one of {kube_proxy.MODES}")
    if why := anchors.missing("kube-proxy"):
        pytest.skip(why)
    ROOT_BEFORE[request.param] = root_conntrack()
    lab = modes.up_lab(request, nodes=3, control_plane=True, proxy_mode=request.param)
    s = modes.ServiceLab(lab, request.param)
    s.deployment("web", 3)
    for node in ("node1", "node3"):
        s.client_pod(f"client-{node}", node)
    s.service("web", {"app": "web"}, type="NodePort")
    s.service("sticky", {"app": "web"}, sessionAffinity="ClientIP",
              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 3}})
    s.service("nobody", {"app": "nobody"})
    s.ready("app=web", 3)
    s.ready("role=client", 2)
    s.endpoints("web", 3)
    s.serving("web", 3)  # kube-proxy syncs at most once a second (minSyncPeriod): wait for it
    try:
        yield s
    finally:
        s.api.close()


test_cluster_ip_from_pods_on_every_node_reaches_every_backend = \
    modes.test_cluster_ip_from_pods_on_every_node_reaches_every_backend
test_node_port_on_every_node_from_outside = modes.test_node_port_on_every_node_from_outside
test_client_ip_affinity_holds = modes.test_client_ip_affinity_holds
test_service_without_endpoints_is_refused_fast = modes.test_service_without_endpoints_is_refused_fast
test_cluster_dns_through_the_service_proxy = modes.test_cluster_dns_through_the_service_proxy


def test_kube_proxy_in_the_node_only(slab: modes.ServiceLab) -> None:
    """Every node's kube-proxy runs, has synced (its metric, read in the node) and answers
    /healthz there; the conntrack sysctls it set hold in the node's namespace, while the root
    namespace's are what they were before the lab."""
    for short, ip in modes.NODE_IPS.items():
        metrics = slab.lab.exec(short, ["curl", "-s", "-m", "5", f"http://{ip}:{kube_proxy.METRICS_PORT}/metrics"])
        assert "kubeproxy_sync_proxy_rules_duration_seconds_count" in metrics.stdout, (short, metrics.stderr)
        health = slab.lab.exec(short, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                                       f"http://{ip}:{kube_proxy.HEALTHZ_PORT}/healthz"])
        assert health.stdout == "200", (short, health.stdout, health.stderr)
        for name, value in CONNTRACK.items():
            got = slab.lab.exec(short, ["cat", f"/proc/sys/net/netfilter/{name}"]).stdout.strip()
            assert got == str(value), (short, name, got)
    assert root_conntrack() == ROOT_BEFORE[slab.mode]
