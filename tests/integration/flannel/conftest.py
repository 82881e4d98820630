"""Fixtures for the flannel_py integration tests: a mini cluster per module, always torn down."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from knet_testing.flannel import PREFIX, Topo
from tests.integration.flannel.kube_env import KubeTopo

VXLAN_CONFIG = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}
HOSTGW_CONFIG = {"Network": "10.245.0.0/16", "Backend": {"Type": "host-gw"}}


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


def _topo(request: pytest.FixtureRequest, tag: str, config: dict) -> Topo:
    _require_root()
    topo = Topo(tag)

    # Registered right after the first namespaces exist: whatever happens, everything goes.
    request.addfinalizer(topo.cleanup)
    topo.start_etcd()
    topo.put(f"{PREFIX}/config", json.dumps(config))
    return topo


@pytest.fixture(scope="module")
def vxlan_cluster(request: pytest.FixtureRequest) -> Topo:
    """Nodes 1 and 2 started at the same moment (node 1 with --ip-masq), a pod on each."""
    topo = _topo(request, "v", VXLAN_CONFIG)
    n1, n2 = topo.add_node(1), topo.add_node(2)
    topo.start_daemon(n1, "--ip-masq")
    topo.start_daemon(n2)
    topo.wait_subnet(n1)
    topo.wait_subnet(n2)
    topo.add_pod(n1)
    topo.add_pod(n2)
    return topo


@pytest.fixture(scope="module")
def bare_cluster(request: pytest.FixtureRequest) -> Topo:
    """etcd and the underlay only; tests add nodes and configs (under their own prefixes)."""
    return _topo(request, "b", HOSTGW_CONFIG)


@pytest.fixture(scope="module")
def hostgw_cluster(request: pytest.FixtureRequest) -> Topo:
    topo = _topo(request, "h", HOSTGW_CONFIG)
    nodes = [topo.add_node(1), topo.add_node(2)]
    for n in nodes:
        topo.start_daemon(n)
    for n in nodes:
        topo.wait_subnet(n)
        topo.add_pod(n)
    return topo


@pytest.fixture(scope="module")
def kube_cluster(request: pytest.FixtureRequest) -> KubeTopo:
    """The kube subnet manager: an API server, nodes 1-3 (Nodes with podCIDR 10.246.<i>.0/24, flannel-py
    --kube-subnet-mgr started together), a pod on each."""
    _require_root()
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    topo = KubeTopo()
    request.addfinalizer(topo.cleanup)
    topo.start_control_plane()
    nodes = {i: topo.add_node(i) for i in (1, 2, 3)}
    for i, node in nodes.items():
        topo.create_node(i, f"10.246.{i}.0/24")
        topo.start_kube_daemon(node, i)
    for node in nodes.values():
        topo.wait_subnet(node, timeout=60)
        topo.add_pod(node)
    return topo


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # The daemons' logs explain most failures; attach them to the failing test's report.
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Topo):
                report.sections.append(("flannel-py logs", value.logs()))
