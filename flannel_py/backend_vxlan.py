"""VXLAN data path: the flannel.<VNI> device and its per-remote-node route, neighbour and FDB.

Reconcile reads what the kernel has on the device, diffs it against the desired set (see
desired.py) and applies only the difference, stale entries first: a neighbour or FDB entry for
a MAC that moved must be gone before its replacement goes in. Nothing outside flannel.<VNI> is
touched, so other routes in the node stay theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address

from flannel_py.config import VXLAN_OVERHEAD, Backend
from flannel_py.desired import Desired, Fdb, Neigh, Route, desired_vxlan, diff
from flannel_py.lease import Lease, LeaseAttrs, vxlan_attrs
from knet import links

log = logging.getLogger(__name__)


@dataclass
class Changes:
    added: int = 0
    removed: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class VxlanBackend:
    def __init__(self, backend: Backend, underlay: str, public_ip: IPv4Address, netns: str | None = None) -> None:
        self.backend = backend
        self.device = backend.device
        self.underlay = underlay
        self.public_ip = public_ip
        self.netns = netns
        self.mtu = 0
        self.vtep_mac = ""

    def prepare(self) -> LeaseAttrs:
        """Create (or adopt) the device; its MAC goes into our lease as VtepMAC."""
        with links.iproute(self.netns) as ipr:
            underlay_mtu = links.mtu_of(ipr, self.underlay)
            if underlay_mtu is None:
                raise ValueError(f"underlay interface {self.underlay} does not exist")
            self.mtu = underlay_mtu - VXLAN_OVERHEAD
            _, created = links.ensure_vxlan(ipr, self.device, self.backend.vni, self.backend.port,
                                            str(self.public_ip), self.underlay, self.mtu)
            self.vtep_mac = links.mac_of(links.get_link(ipr, self.device)).lower()
        log.info("vxlan device created" if created else "vxlan device adopted",
                 extra={"device": self.device, "vni": self.backend.vni, "port": self.backend.port,
                        "local": str(self.public_ip), "dev": self.underlay, "mtu": self.mtu, "vtep_mac": self.vtep_mac})
        return vxlan_attrs(self.public_ip, self.backend.vni, self.vtep_mac)

    def configure(self, own: Lease) -> None:
        """Address the device with the subnet's .0/32 (and nothing else)."""
        want = f"{own.subnet.network_address}/32"
        with links.iproute(self.netns) as ipr:
            for cidr in links.addresses(ipr, self.device):
                if ":" not in cidr and cidr != want:
                    links.del_address(ipr, self.device, cidr)
            links.add_address(ipr, self.device, want)

    def desired(self, own: Lease, leases: list[Lease]) -> Desired:
        return desired_vxlan(own, leases, self.backend.vni)

    def actual(self) -> Desired:
        with links.iproute(self.netns) as ipr:
            routes = frozenset(Route(r["dst"], r["gw"]) for r in links.routes_via(ipr, self.device) if r["gw"])
            neighs = frozenset(Neigh(ip, mac) for ip, mac in links.neighbours(ipr, self.device))
            fdb = frozenset(Fdb(mac, dst) for mac, dst in links.fdb_entries(ipr, self.device))
        return Desired(routes, neighs, fdb)

    def reconcile(self, own: Lease, leases: list[Lease]) -> Changes:
        want = self.desired(own, leases)
        have = self.actual()
        routes, neighs, fdb = diff(want.routes, have.routes), diff(want.neighs, have.neighs), diff(want.fdb, have.fdb)
        changes = Changes()
        with links.iproute(self.netns) as ipr:
            for r in sorted(routes.remove):
                links.del_route(ipr, r.dst, gateway=r.gateway, ifname=self.device)
                log.info("route removed", extra={"dst": r.dst, "via": r.gateway, "dev": self.device})
            for n in sorted(neighs.remove):
                links.del_neigh(ipr, self.device, n.ip)
                log.info("neigh removed", extra={"ip": n.ip, "lladdr": n.mac, "dev": self.device})
            for f in sorted(fdb.remove):
                links.del_fdb(ipr, self.device, f.mac, f.dst)
                log.info("fdb removed", extra={"mac": f.mac, "dst": f.dst, "dev": self.device})
            # Neighbour and FDB before the route: the moment the route exists, packets use it.
            for f in sorted(fdb.add):
                links.set_fdb(ipr, self.device, f.mac, f.dst)
                log.info("fdb added", extra={"mac": f.mac, "dst": f.dst, "dev": self.device})
            for n in sorted(neighs.add):
                links.set_neigh(ipr, self.device, n.ip, n.mac)
                log.info("neigh added", extra={"ip": n.ip, "lladdr": n.mac, "dev": self.device})
            for r in sorted(routes.add):
                links.add_route(ipr, r.dst, gateway=r.gateway, ifname=self.device, onlink=True, replace=True)
                log.info("route added", extra={"dst": r.dst, "via": r.gateway, "dev": self.device, "onlink": True})
        changes.removed = len(routes.remove) + len(neighs.remove) + len(fdb.remove)
        changes.added = len(routes.add) + len(neighs.add) + len(fdb.add)
        return changes
