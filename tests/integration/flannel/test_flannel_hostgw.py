"""flannel-py with the host-gw backend: plain routes via the other nodes' PublicIP."""

from __future__ import annotations

import json

import pytest

from knet import links
from knet_testing.flannel import PREFIX, Node, Topo, wait_for
from tests.netutil import icmp_echo, tcp_request, tcp_server

pytestmark = pytest.mark.integration


def gw_routes(node: Node) -> set[tuple[str, str]]:
    with links.iproute(node.name) as ipr:
        return {(r["dst"], r["gw"]) for r in links.routes_via(ipr, "eth0") if r["gw"]}


def test_routes_via_public_ip_and_no_overlay(hostgw_cluster: Topo):
    n1, n2 = hostgw_cluster.nodes[1], hostgw_cluster.nodes[2]
    assert n1.subnet() != n2.subnet()
    wait_for(lambda: gw_routes(n1) == {(str(n2.subnet()), n2.ip)}, what="route to n2 on n1")
    wait_for(lambda: gw_routes(n2) == {(str(n1.subnet()), n1.ip)}, what="route to n1 on n2")
    value = json.loads(hostgw_cluster.subnet_keys()[f"{PREFIX}/subnets/{n1.subnet().network_address}-24"])
    assert value == {"PublicIP": n1.ip, "PublicIPv6": None, "BackendType": "host-gw"}
    assert n1.env()["FLANNEL_MTU"] == "1500"  # no encapsulation overhead
    with links.iproute(n1.name) as ipr:
        assert not [link for link in ipr.link("dump") if link.get("IFLA_IFNAME", "").startswith("flannel.")]


def test_pod_to_pod(hostgw_cluster: Topo):
    n1, n2 = hostgw_cluster.nodes[1], hostgw_cluster.nodes[2]
    wait_for(lambda: icmp_echo(n1.pod, n2.pod_ip) is not None, what="ping n1 pod -> n2 pod")
    assert icmp_echo(n2.pod, n1.pod_ip) is not None
    with tcp_server(n2.pod, n2.pod_ip) as port:
        assert tcp_request(n1.pod, n2.pod_ip, port, b"hg") == f"from {n1.pod_ip}:hg".encode()


def test_lease_removal_removes_route_and_nothing_else(hostgw_cluster: Topo):
    n1, n2 = hostgw_cluster.nodes[1], hostgw_cluster.nodes[2]
    ghost = f"{PREFIX}/subnets/10.245.77.0-24"
    hostgw_cluster.put(ghost, json.dumps({"PublicIP": "192.168.33.77", "BackendType": "host-gw"}))
    wait_for(lambda: ("10.245.77.0/24", "192.168.33.77") in gw_routes(n1), timeout=30, what="ghost route")
    # A route that is not flannel's (outside the Network) must survive reconciliation.
    with links.iproute(n1.name) as ipr:
        links.add_route(ipr, "172.31.0.0/16", gateway="192.168.33.2", ifname="eth0")
    hostgw_cluster.etcdctl("del", ghost)
    wait_for(lambda: gw_routes(n1) == {(str(n2.subnet()), n2.ip), ("172.31.0.0/16", "192.168.33.2")}, timeout=30,
             what="ghost route removed, foreign route kept")
