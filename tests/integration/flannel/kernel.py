"""What a node's kernel has on its flannel device, for the flannel-py tests (the VXLAN tests and
the kube subnet manager's use VNI 7: device flannel.7)."""

from __future__ import annotations

from knet import links
from knet_testing.flannel import Node
from tests.netutil import icmp_echo

DEV = "flannel.7"


def entries(node: Node) -> tuple[set, set, set]:
    """(routes, permanent neighbours, fdb) on the node's flannel device."""
    with links.iproute(node.name) as ipr:
        routes = {(r["dst"], r["gw"]) for r in links.routes_via(ipr, DEV)}
        return routes, set(links.neighbours(ipr, DEV)), set(links.fdb_entries(ipr, DEV))


def has_remote(node: Node, subnet: str, public_ip: str, mac: str) -> bool:
    routes, neighs, fdb = entries(node)
    vtep = subnet.split("/")[0]
    return (subnet, vtep) in routes and (vtep, mac) in neighs and (mac, public_ip) in fdb


def knows_nothing_of(node: Node, subnet: str) -> bool:
    routes, neighs, _ = entries(node)
    vtep = subnet.split("/")[0]
    return all(r[0] != subnet for r in routes) and all(n[0] != vtep for n in neighs)


def vtep_mac(node: Node) -> str:
    with links.iproute(node.name) as ipr:
        return links.mac_of(links.get_link(ipr, DEV)).lower()


def ping(src: str, dst: str) -> bool:
    return icmp_echo(src, dst, timeout=2.0) is not None
