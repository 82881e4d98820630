"""Real packets between lab pods: TCP, UDP and ICMP, on one node and across nodes, with each of
flannel_py's subnet managers (every test runs on conftest.overlay_lab's two labs)."""

from __future__ import annotations

import ipaddress

import pytest

from knet import links, netns
from lab import api
from lab.net import kernel
from tests.integration.lab.lab_helpers import scapy_in, tcp_exchange, udp_both_ways

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(overlay_lab: api.Lab) -> api.Lab:
    return overlay_lab


@pytest.fixture(scope="module")
def pods(overlay_pods: dict[str, dict]) -> dict[str, dict]:
    return overlay_pods


def test_topology_in_the_kernel(lab: api.Lab) -> None:
    names = set(netns.list_names(f"{lab.name}-"))
    assert {f"{lab.name}-{n}" for n in ("underlay", "ctl", "client", "node1", "node2", "node3")} <= names
    nodes = lab.nodes
    subnets = {short: n["pod_subnet"] for short, n in nodes.items()}
    assert len(set(subnets.values())) == 3  # every node leased its own /24 of the cluster network
    assert all(ipaddress.ip_network(s).subnet_of(ipaddress.ip_network("10.244.0.0/16")) for s in subnets.values())
    with kernel.ns_iproute(f"{lab.name}-node2") as ipr:
        assert [a for a in links.addresses(ipr, "eth0") if "." in a] == ["192.168.33.12/24"]
        got = {(r["dst"], r["gw"]) for r in links.routes(ipr)}
        # the overlay (flannel_py, vxlan): other nodes' subnets via their VTEP address (.0) on flannel.1
        for other in ("node1", "node3"):
            net = ipaddress.ip_network(subnets[other])
            assert (str(net), str(net.network_address)) in got
        assert links.index(ipr, "flannel.1") is not None
        assert not any(r["dst"] == "0.0.0.0/0" for r in links.routes(ipr))
    with netns.enter(f"{lab.name}-node2"), open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == "1"
    # The client reaches the nodes and the control plane over the underlay bridge.
    for ip in ("192.168.33.2", "192.168.33.11", "192.168.33.13"):
        assert lab.exec("client", ["ping", "-c1", "-W2", ip]).returncode == 0


def test_pods_get_addresses_from_their_node_subnet(lab: api.Lab, pods: dict[str, dict]) -> None:
    subnets = {short: ipaddress.ip_network(n["pod_subnet"]) for short, n in lab.nodes.items()}
    assert ipaddress.ip_address(pods["a1"]["ip"]) in subnets["node1"]
    assert ipaddress.ip_address(pods["a2"]["ip"]) in subnets["node1"]
    assert ipaddress.ip_address(pods["b1"]["ip"]) in subnets["node2"]
    assert len({p["ip"] for p in pods.values()}) == 3
    recorded = lab.pods()
    assert {k for k in recorded if k.startswith("default/")} >= {"default/a1", "default/a2", "default/b1"}
    assert recorded["default/a1"]["container_id"] == pods["a1"]["container_id"]


@pytest.mark.parametrize(("src", "dst", "port"), [("a1", "a2", 7001), ("a1", "b1", 7002), ("b1", "a2", 7003)],
                         ids=["same-node", "cross-node", "cross-node-back"])
def test_tcp_sees_real_pod_source(pods: dict[str, dict], src: str, dst: str, port: int) -> None:
    s, d = pods[src], pods[dst]
    peer, got, reply = tcp_exchange(d["netns"], d["ip"], s["netns"], d["ip"], port, payload=b"x" * 100_000)
    assert got == b"x" * 100_000
    assert reply == b"echo:" + b"x" * 100_000
    assert peer == s["ip"], "pod-to-pod traffic must not be NATed"


@pytest.mark.parametrize(("a", "b", "port"), [("a1", "a2", 7101), ("a2", "b1", 7102)], ids=["same-node", "cross-node"])
def test_udp_both_ways(pods: dict[str, dict], a: str, b: str, port: int) -> None:
    pa, pb = pods[a], pods[b]
    from_a, got_b, from_b, got_a = udp_both_ways(pa["netns"], pa["ip"], pb["netns"], pb["ip"], port)
    assert (got_b, from_a) == (b"ping from a", (pa["ip"], port))
    assert (got_a, from_b) == (b"pong from b", (pb["ip"], port))


@pytest.mark.parametrize(("src", "dst"), [("a1", "a2"), ("a2", "b1"), ("b1", "a1")],
                         ids=["same-node", "cross-node", "cross-node-back"])
def test_icmp_echo_with_scapy(pods: dict[str, dict], src: str, dst: str) -> None:
    from scapy.all import ICMP, IP, Raw, sr1
    s, d = pods[src], pods[dst]
    with scapy_in(s["netns"]):
        ans = sr1(IP(dst=d["ip"]) / ICMP(id=0x6b6e, seq=7) / Raw(b"knet-lab"), timeout=3, threaded=False)
    assert ans is not None, f"no echo reply from {d['ip']}"
    assert (ans[IP].src, ans[IP].dst) == (d["ip"], s["ip"])
    assert (ans[ICMP].type, ans[ICMP].id, ans[ICMP].seq) == (0, 0x6b6e, 7)
    assert bytes(ans[Raw].load) == b"knet-lab"


def test_pods_reach_their_gateway_but_the_client_has_no_route_to_pods(lab: api.Lab, pods: dict[str, dict]) -> None:
    gateway = ipaddress.ip_network(lab.node("node1")["pod_subnet"]).network_address + 1
    assert lab.exec("a1", ["ping", "-c1", "-W2", str(gateway)]).returncode == 0
    # No default route anywhere: the outside client cannot reach pod addresses directly.
    r = lab.exec("client", ["ping", "-c1", "-W1", pods["a1"]["ip"]])
    assert r.returncode != 0


def test_port_mapping_from_the_client(lab: api.Lab) -> None:
    """The conflist's second plugin (portmap) gets runtimeConfig.portMappings and the first's
    result as prevResult: a node port then reaches the pod from outside."""
    rec = lab.add_pod("node3", "web", ports=["30080:8080/tcp"])
    try:
        assert rec["ports"] == [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]
        peer, got, reply = tcp_exchange(rec["netns"], rec["ip"], f"{lab.name}-client", "192.168.33.13", 8080,
                                        dst_port=30080, payload=b"via portmap")
        assert (got, reply) == (b"via portmap", b"echo:via portmap")
        assert peer == "192.168.33.100"
    finally:
        lab.del_pod("web")
