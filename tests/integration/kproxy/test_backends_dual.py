"""Dual-stack: the iptables, nftables and userspace data paths serving IPv4 and IPv6 at once, one
backend per family as the daemon runs them (kproxy.proxier: kube-proxy's per-family proxiers).

Topology (one per mode, module scope; every test full-syncs its own services):

    client (192.168.78.100, fd00:33::100) -- veth -- node eth0 (192.168.78.1, fd00:33::1)
    node: cni0 10.99.0.0/24 + fd00:10:244:1::/64 (knet-cni with both families), pods a, b, c
    services: 10.96.0.0/12 and fd00:10:96::/112, routed to cni0 on the node (a real node has a
    default route; without one, traffic to a service without endpoints dies in routing before
    the REJECT rules see it)

The IPv6 addresses are the issue's (underlay fd00:33::/64, pods fd00:10:244::/56, services
fd00:10:96::/112), added without duplicate address detection so they are usable at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from knet import links, netns
from kproxy import backend as backends
from kproxy.model import Config, Endpoint, ServicePort
from tests.integration.cni.conftest import _make_node
from tests.integration.kproxy.kproxy_helpers import ask, named_server, wait_answers

pytestmark = pytest.mark.integration
NODE4, NODE6 = "192.168.78.1", "fd00:33::1"
CLIENT4, CLIENT6 = "192.168.78.100", "fd00:33::100"
VIP4, VIP6 = "10.96.9.1", "fd00:10:96::901"
POD_CIDRS = {4: "10.99.0.0/24", 6: "fd00:10:244:1::/64"}


class DualNode:
    """A node with both families' backends, its pods (each with an IPv4 and an IPv6 address) and
    an outside client on a LAN of both families."""

    def __init__(self, node, mode: str) -> None:
        self.node, self.mode = node, mode
        self.client = f"{node.prefix}-cl"
        self.pods: dict[str, dict[int, str]] = {}  # name -> family -> address
        self.ns: dict[str, str] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backends: dict[int, backends.Backend] = {}
        self.pod("c")  # makes cni0 (with both gateway addresses) before the routes to it
        netns.run(node.name, ["ip", "route", "add", "10.96.0.0/12", "dev", "cni0"], check=True)
        netns.run(node.name, ["ip", "-6", "route", "add", "fd00:10:96::/112", "dev", "cni0"], check=True)
        self._client()
        if mode == "userspace":
            ready = threading.Event()

            def run_loop() -> None:
                with netns.enter(node.name):  # every socket the loop makes is the node's
                    self.loop = asyncio.new_event_loop()
                    ready.set()
                    self.loop.run_forever()

            threading.Thread(target=run_loop, daemon=True).start()
            assert ready.wait(30)
        with netns.enter(node.name):
            for family, cidr in ((4, "10.99.0.0/16"), (6, "fd00:10:244::/56")):
                cfg = Config(node_name="node1", cluster_cidr=cidr, family=family)
                self.backends[family] = backends.create(mode, cfg, backends.Options(loop=self.loop))

    def _client(self) -> None:
        netns.create(self.client)
        fd = os.open(netns.path(self.client), os.O_RDONLY)
        try:
            with links.iproute(self.node.name) as ipr:
                links.make_veth(ipr, "eth0", "lan0", peer_netns_fd=fd)
        finally:
            os.close(fd)
        for ns, dev, v4, v6 in ((self.node.name, "eth0", NODE4, NODE6), (self.client, "lan0", CLIENT4, CLIENT6)):
            with links.iproute(ns) as ipr:
                links.set_up(ipr, dev)
                links.add_address(ipr, dev, f"{v4}/24")
                links.add_address(ipr, dev, f"{v6}/64", nodad=True)

    def pod(self, name: str) -> str:
        ns = self.node.new_pod()
        conf = self.node.conf(ipam={"type": "host-local", "ranges": [[{"subnet": POD_CIDRS[4]}],
                                                                     [{"subnet": POD_CIDRS[6]}]],
                                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                                    "dataDir": os.path.join(self.node.state, "ipam")})
        rc, res = self.node.cni("ADD", conf, name, ns)
        assert rc == 0, res
        addrs = [ip["address"].split("/")[0] for ip in res["ips"]]
        self.pods[name] = {6 if ":" in a else 4: a for a in addrs}
        assert set(self.pods[name]) == {4, 6}, res
        self.ns[name] = ns
        return ns

    def ep(self, name: str, family: int) -> Endpoint:
        return Endpoint(self.pods[name][family], 8080, node_name="node1")

    def sync(self, ports: list[ServicePort], full: bool = True) -> None:
        """Each family's backend gets that family's ports (as the proxier hands them)."""
        with netns.enter(self.node.name):
            for family, be in self.backends.items():
                backends.sync_all(be, [sp for sp in ports if sp.family == family], full)

    def close(self) -> None:
        with netns.enter(self.node.name):
            for be in self.backends.values():
                be.cleanup() if self.mode != "userspace" else be.close()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        netns.delete(self.client)


@pytest.fixture(scope="module", params=["iptables", "nftables", "userspace"])
def dual(request) -> Iterator[DualNode]:
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(contextlib.contextmanager(_make_node)(with_agent=False))
        d = DualNode(node, request.param)
        stack.callback(d.close)
        for name in ("a", "b"):
            ns = d.pod(name)
            stack.enter_context(named_server(ns, name, "TCP", addr="::"))
            stack.enter_context(named_server(ns, name, "UDP", addr="::"))
        for name in ("a", "b"):  # new IPv6 neighbours (NDP through the fresh bridge) answer in time
            for ns in (d.ns["c"], node.name):
                wait_answers(ns, d.pods[name][6], 8080, name)
        yield d



def web(d: DualNode, family: int, names: list[str], **kw) -> ServicePort:
    vip = VIP6 if family == 6 else VIP4
    return ServicePort("default", "web", "", kw.pop("proto", "TCP"), 80, (vip,),
                       endpoints=tuple(d.ep(n, family) for n in names), family=family, **kw)


def test_v6_cluster_ip_reaches_the_v6_backends_and_follows_changes(dual: DualNode):
    d = dual
    d.sync([web(d, 6, ["a", "b"])])
    seen = collections.Counter()
    for _ in range(30):
        name, peer = ask(d.ns["c"], VIP6, 80).split()
        seen[name] += 1
        assert ":" in peer  # the backend was reached over IPv6
    assert set(seen) == {"a", "b"}, seen
    d.sync([web(d, 6, ["b"])], full=False)  # a partial sync of the v6 family
    assert {ask(d.ns["c"], VIP6, 80).split()[0] for _ in range(10)} == {"b"}


def test_v6_udp_cluster_ip(dual: DualNode):
    d = dual
    d.sync([web(d, 6, ["a"], proto="UDP")])
    assert ask(d.ns["c"], VIP6, 80, "UDP").split()[0] == "a"


def test_dual_stack_service_is_reachable_on_both_cluster_ips(dual: DualNode):
    d = dual
    d.sync([web(d, 4, ["a"]), web(d, 6, ["b"])])
    name4, peer4 = ask(d.ns["c"], VIP4, 80).split()
    name6, peer6 = ask(d.ns["c"], VIP6, 80).split()
    # Each family's proxier sends its family's traffic to its family's endpoints.
    assert (name4, name6) == ("a", "b")
    assert "." in peer4 and ":" in peer6
    # The node itself reaches both too.
    assert ask(d.node.name, VIP6, 80).split()[0] == "b"


def test_node_port_on_the_nodes_v6_address_from_outside(dual: DualNode):
    d = dual
    ports = [web(d, f, ["a", "b"], node_port=30080) for f in (4, 6)]
    d.sync(ports)
    seen6 = {ask(d.client, NODE6, 30080).split()[0] for _ in range(20)}
    assert seen6 == {"a", "b"}
    assert ask(d.client, NODE4, 30080).split()[0] in ("a", "b")  # the same node port in IPv4


def test_session_affinity_per_family(dual: DualNode):
    d = dual
    d.sync([web(d, f, ["a", "b"], affinity_seconds=60) for f in (4, 6)])
    for vip in (VIP4, VIP6):
        assert len({ask(d.ns["c"], vip, 80).split()[0] for _ in range(15)}) == 1, vip


def test_v6_service_without_endpoints_is_refused_at_once(dual: DualNode):
    d = dual
    d.sync([ServicePort("default", "empty", "", "TCP", 80, (VIP6,), node_port=30081, family=6)])
    for ns, host, port in ((d.ns["c"], VIP6, 80), (d.client, NODE6, 30081)):
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            ask(ns, host, port, timeout=5)
        assert time.monotonic() - start < 2.5, (host, port)


def test_v6_udp_service_without_endpoints_answers_with_icmp6(dual: DualNode):
    d = dual
    d.sync([ServicePort("default", "empty-udp", "", "UDP", 53, (VIP6,), family=6)])
    with netns.enter(d.ns["c"]):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with s:
        s.settimeout(5)
        s.connect((VIP6, 53))  # connected: the ICMPv6 port unreachable surfaces as ECONNREFUSED
        s.send(b"q")
        with pytest.raises(ConnectionRefusedError):
            s.recv(100)
