"""host-gw data path: a plain route per remote node subnet via that node's PublicIP.

Needs every node on one L2 segment (the next hop must be directly reachable), as in flanneld.
Only routes to subnets inside the cluster Network that leave through the underlay with a
gateway are ours; reconcile never touches any other route of the node. Dual-stack: also a route
per remote IPv6 subnet via that node's PublicIPv6 (the underlay's IPv6 address), inside IPv6Network.
"""

from __future__ import annotations

import ipaddress
import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel_py.backend_vxlan import Changes
from flannel_py.desired import Desired, Route, desired_hostgw, diff
from flannel_py.lease import Lease, LeaseAttrs, hostgw_attrs
from knet import links

log = logging.getLogger(__name__)


class HostGwBackend:
    def __init__(self, network: IPv4Network, underlay: str, public_ip: IPv4Address, netns: str | None = None,
                 ipv6_network: IPv6Network | None = None, public_ipv6: IPv6Address | None = None) -> None:
        self.network = network
        self.underlay = underlay
        self.public_ip = public_ip
        self.netns = netns
        self.ipv6_network = ipv6_network
        self.public_ipv6 = public_ipv6
        self.mtu = 0

    def prepare(self) -> LeaseAttrs:
        with links.iproute(self.netns) as ipr:
            mtu = links.mtu_of(ipr, self.underlay)
        if mtu is None:
            raise ValueError(f"underlay interface {self.underlay} does not exist")
        self.mtu = mtu  # no encapsulation: pods get the full underlay MTU
        log.info("host-gw backend", extra={"dev": self.underlay, "public_ip": str(self.public_ip),
                                           "public_ipv6": str(self.public_ipv6 or "-"), "mtu": self.mtu})
        return hostgw_attrs(self.public_ip, self.public_ipv6)

    def configure(self, own: Lease) -> None:
        return None

    def desired(self, own: Lease, leases: list[Lease]) -> Desired:
        return desired_hostgw(own, leases)

    def actual(self) -> Desired:
        networks = [(2, self.network)] + ([(10, self.ipv6_network)] if self.ipv6_network else [])
        ours: set[Route] = set()
        with links.iproute(self.netns) as ipr:
            for family, network in networks:
                ours |= {Route(r["dst"], r["gw"]) for r in links.routes_via(ipr, self.underlay, family)
                         if r["gw"] and ipaddress.ip_network(r["dst"]).subnet_of(network)}  # type: ignore[arg-type]
        return Desired(routes=frozenset(ours))

    def reconcile(self, own: Lease, leases: list[Lease]) -> Changes:
        routes = diff(self.desired(own, leases).routes, self.actual().routes)
        with links.iproute(self.netns) as ipr:
            for r in sorted(routes.remove):
                links.del_route(ipr, r.dst, gateway=r.gateway, ifname=self.underlay)
                log.info("route removed", extra={"dst": r.dst, "via": r.gateway, "dev": self.underlay})
            for r in sorted(routes.add):
                links.add_route(ipr, r.dst, gateway=r.gateway, ifname=self.underlay, replace=True)
                log.info("route added", extra={"dst": r.dst, "via": r.gateway, "dev": self.underlay})
        return Changes(added=len(routes.add), removed=len(routes.remove))
