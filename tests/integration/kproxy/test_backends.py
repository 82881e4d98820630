"""The iptables, nftables and userspace data paths on one node, driven directly with service ports.

(The full lab suite — services from the API server, three nodes, NodePort from the client —
builds on the same backends; this module proves each backend's kernel wiring on its own.)
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import pytest

from knet import netns
from kproxy import backend as backends
from kproxy.model import Config, Endpoint, ServicePort
from tests.integration.cni.conftest import _make_node
from tests.integration.kproxy.kproxy_helpers import ask, named_server

pytestmark = pytest.mark.integration
VIP = "10.96.7.7"


class Harness:
    """A node with a bridge and pods (from knet-cni), and a backend running inside the node."""

    def __init__(self, node, mode: str) -> None:
        self.node = node
        self.mode = mode
        self.cfg = Config(node_name="node1", cluster_cidr="10.99.0.0/16")
        self.pods: dict[str, str] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        # Nodes route the service range somewhere (a real node has a default route): without a
        # route, traffic to an unproxied service IP dies in routing before the REJECT rules see it.
        node.new_pod()  # makes sure the namespace prefix is in place before the bridge exists
        rc, _ = node.cni("ADD", node.conf(), "route-anchor", node.pods[-1])
        assert rc == 0
        netns.run(node.name, ["ip", "route", "add", "10.96.0.0/12", "dev", "cni0"], check=True)
        if mode == "userspace":
            ready = threading.Event()

            def run_loop() -> None:
                # The loop thread lives in the node namespace: every socket it makes is the node's.
                with netns.enter(node.name):
                    self.loop = asyncio.new_event_loop()
                    ready.set()
                    self.loop.run_forever()

            threading.Thread(target=run_loop, daemon=True).start()
            ready.wait(5)
        with netns.enter(node.name):
            self.backend = backends.create(mode, self.cfg, backends.Options(loop=self.loop))

    def pod(self, name: str) -> str:
        ns = self.node.new_pod()
        rc, res = self.node.cni("ADD", self.node.conf(), name, ns)
        assert rc == 0, res
        self.pods[name] = res["ips"][0]["address"].split("/")[0]
        return ns

    def sync(self, ports: list[ServicePort], full: bool = False):
        with netns.enter(self.node.name):
            return backends.sync_all(self.backend, ports, full)

    def close(self) -> None:
        self.backend.close()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(params=["iptables", "nftables", "userspace"])
def harness(request):
    for node in _make_node(with_agent=True):
        h = Harness(node, request.param)
        try:
            yield h
        finally:
            h.close()


def service(h: Harness, names: list[str], proto: str = "TCP", **kw) -> ServicePort:
    eps = tuple(Endpoint(h.pods[n], 8080, node_name="node1") for n in names)
    return ServicePort("default", "web", "", proto, 80, (VIP,), endpoints=eps, **kw)


def test_cluster_ip_spreads_over_backends_and_follows_changes(harness):
    h = harness
    a, b, client = h.pod("a"), h.pod("b"), h.pod("client")
    with named_server(a, "a"), named_server(b, "b"):
        h.sync([service(h, ["a", "b"])], full=True)
        seen = collections.Counter(ask(client, VIP, 80).split()[0] for _ in range(40))
        assert set(seen) == {"a", "b"}, seen
        assert min(seen.values()) >= 8  # an even split, not a 39/1 fluke
        h.sync([service(h, ["b"])])
        assert {ask(client, VIP, 80).split()[0] for _ in range(10)} == {"b"}


def test_no_endpoints_is_refused_not_hanging(harness):
    h = harness
    client = h.pod("client")
    h.sync([ServicePort("default", "empty", "", "TCP", 80, (VIP,))], full=True)
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        ask(client, VIP, 80, timeout=3)
    assert time.monotonic() - start < 1.5


def test_udp_cluster_ip(harness):
    h = harness
    a, client = h.pod("a"), h.pod("client")
    with named_server(a, "a", "UDP"):
        h.sync([service(h, ["a"], "UDP")], full=True)
        assert ask(client, VIP, 80, "UDP").split()[0] == "a"


def test_client_ip_affinity(harness):
    h = harness
    a, b, client = h.pod("a"), h.pod("b"), h.pod("client")
    with named_server(a, "a"), named_server(b, "b"):
        h.sync([service(h, ["a", "b"], affinity_seconds=60)], full=True)
        assert len({ask(client, VIP, 80).split()[0] for _ in range(20)}) == 1


def test_node_itself_reaches_the_vip(harness):
    h = harness
    a = h.pod("a")
    with named_server(a, "a"):
        h.sync([service(h, ["a"])], full=True)
        assert ask(h.node.name, VIP, 80).split()[0] == "a"


def test_resync_repairs_tampering(harness):
    h = harness
    a, client = h.pod("a"), h.pod("client")
    with named_server(a, "a"):
        ports = [service(h, ["a"])]
        h.sync(ports, full=True)
        if h.mode == "nftables":
            netns.run(h.node.name, ["nft", "flush", "map", "ip", "kube-proxy", "service-ips"], check=True)
        else:
            chain = "KUBE-SERVICES" if h.mode == "iptables" else "KUBE-PORTALS-CONTAINER"
            netns.run(h.node.name, ["iptables", "-t", "nat", "-F", chain], check=True)
        with pytest.raises(OSError):
            ask(client, VIP, 80, timeout=1)
        h.sync(ports, full=True)
        assert ask(client, VIP, 80).split()[0] == "a"


def test_cleanup_removes_every_chain_and_jump(harness):
    """Uninstall: nothing of kproxy stays in the node's tables (iptables: one restore per table,
    fast even with many services; nftables: the table goes)."""
    if harness.mode == "userspace":
        pytest.skip("iptables and nftables backend cleanup")
    h = harness
    h.pod("a")
    ports = [ServicePort("default", f"web{i}", "", "TCP", 80, (f"10.96.8.{i}",), node_port=30100 + i,
                         endpoints=(Endpoint(h.pods["a"], 8080, node_name="node1"),)) for i in range(1, 60)]
    h.sync(ports, full=True)

    def kube_lines() -> list[str]:
        out = netns.run(h.node.name, ["iptables-save"], check=True, capture_output=True, text=True).stdout
        lines = [line for line in out.splitlines() if "KUBE-" in line]
        out = netns.run(h.node.name, ["nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout
        return lines + [line for line in out.splitlines() if "kube-proxy" in line or "endpoint-" in line]

    assert len(kube_lines()) > 100
    with netns.enter(h.node.name):
        h.backend.cleanup()
    assert kube_lines() == []
