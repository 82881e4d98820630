"""VXLAN data path: the flannel.<VNI> device and its per-remote-node route, neighbour and FDB;
on a dual-stack node also flannel-v6.<VNI>, the IPv6 VTEP over the IPv6 underlay, with the same
three entries per remote node in IPv6.

Why a second device, and why over the IPv6 underlay: that is what flanneld does (its v6 device's
local address is the node's PublicIPv6, its FDB entries point at the other nodes' PublicIPv6), so
the leases we write and read mean the same as flanneld's. flanneld refuses to start dual-stack
without an IPv6 address on the underlay interface; so does the daemon here (daemon.find_public_ipv6).

Reconcile reads what the kernel has on each device, diffs it against the desired set (see
desired.py) and applies only the difference, stale entries first: a neighbour or FDB entry for
a MAC that moved must be gone before its replacement goes in. Nothing outside our devices is
touched, so other routes in the node stay theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pyroute2 import IPRoute

from flannel_py.config import VXLAN_OVERHEAD, VXLAN_V6_OVERHEAD, Backend
from flannel_py.desired import Desired, Fdb, Neigh, Route, desired_vxlan, diff
from flannel_py.lease import Lease, LeaseAttrs, vxlan_attrs
from knet import links

log = logging.getLogger(__name__)
AF = {4: 2, 6: 10}


@dataclass
class Changes:
    added: int = 0
    removed: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class VxlanBackend:
    def __init__(self, backend: Backend, underlay: str, public_ip: IPv4Address, netns: str | None = None,
                 public_ipv6: IPv6Address | None = None) -> None:
        self.backend = backend
        self.device = backend.device
        self.underlay = underlay
        self.public_ip = public_ip
        self.public_ipv6 = public_ipv6  # set: dual-stack, the IPv6 device too
        self.netns = netns
        self.mtu = 0
        self.vtep_mac = ""
        self.vtep_mac_v6: str | None = None

    def devices(self) -> dict[int, str]:
        """Our device per address family."""
        out = {4: self.device}
        if self.public_ipv6 is not None:
            out[6] = self.backend.device_v6
        return out

    def prepare(self) -> LeaseAttrs:
        """Create (or adopt) the device(s); their MACs go into our lease (VtepMAC in BackendData,
        and in BackendV6Data for the IPv6 one)."""
        with links.iproute(self.netns) as ipr:
            underlay_mtu = links.mtu_of(ipr, self.underlay)
            if underlay_mtu is None:
                raise ValueError(f"underlay interface {self.underlay} does not exist")
            self.vtep_mac = self._device(ipr, self.device, str(self.public_ip), underlay_mtu - VXLAN_OVERHEAD)
            # The pods' MTU serves both families: the smaller one when IPv6 crosses an IPv6 underlay.
            self.mtu = underlay_mtu - VXLAN_OVERHEAD
            if self.public_ipv6 is not None:
                self.mtu = underlay_mtu - VXLAN_V6_OVERHEAD
                self.vtep_mac_v6 = self._device(ipr, self.backend.device_v6, str(self.public_ipv6), self.mtu)
        return vxlan_attrs(self.public_ip, self.backend.vni, self.vtep_mac, self.public_ipv6, self.vtep_mac_v6)

    def _device(self, ipr: IPRoute, name: str, local: str, mtu: int) -> str:
        _, created = links.ensure_vxlan(ipr, name, self.backend.vni, self.backend.port, local, self.underlay, mtu)
        mac = links.mac_of(links.get_link(ipr, name)).lower()
        log.info("vxlan device created" if created else "vxlan device adopted",
                 extra={"device": name, "vni": self.backend.vni, "port": self.backend.port,
                        "local": local, "dev": self.underlay, "mtu": mtu, "vtep_mac": mac})
        return mac

    def configure(self, own: Lease) -> None:
        """Address each device with its subnet's first address as a host route (.0/32, ::/128)
        and nothing else (IPv6 link-local addresses are the kernel's and stay)."""
        wants = {self.device: (f"{own.subnet.network_address}/32", 4)}
        if 6 in self.devices() and own.ipv6_subnet is not None:
            wants[self.backend.device_v6] = (f"{own.ipv6_subnet.network_address}/128", 6)
        with links.iproute(self.netns) as ipr:
            for device, (want, version) in wants.items():
                for cidr in links.addresses(ipr, device):
                    is_v6 = ":" in cidr
                    if (version == 6) == is_v6 and cidr != want and not cidr.startswith("fe80:"):
                        links.del_address(ipr, device, cidr)
                # nodad: the subnet is ours by lease; DAD would only hold the address back a while.
                links.add_address(ipr, device, want, nodad=True)

    def desired(self, own: Lease, leases: list[Lease]) -> Desired:
        """The IPv4 device's entries (what the daemon logs); reconcile does every device."""
        return desired_vxlan(own, leases, self.backend.vni)

    def actual(self, family: int = 4) -> Desired:
        device = self.devices()[family]
        with links.iproute(self.netns) as ipr:
            routes = frozenset(Route(r["dst"], r["gw"])
                               for r in links.routes_via(ipr, device, AF[family]) if r["gw"])
            neighs = frozenset(Neigh(ip, mac) for ip, mac in links.neighbours(ipr, device, family=AF[family]))
            fdb = frozenset(Fdb(mac, dst) for mac, dst in links.fdb_entries(ipr, device))
        return Desired(routes, neighs, fdb)

    def reconcile(self, own: Lease, leases: list[Lease]) -> Changes:
        changes = Changes()
        for family, device in self.devices().items():
            want = desired_vxlan(own, leases, self.backend.vni, family)
            more = self._apply(device, want, self.actual(family))
            changes.added += more.added
            changes.removed += more.removed
        return changes

    def _apply(self, device: str, want: Desired, have: Desired) -> Changes:
        routes, neighs, fdb = diff(want.routes, have.routes), diff(want.neighs, have.neighs), diff(want.fdb, have.fdb)
        with links.iproute(self.netns) as ipr:
            for r in sorted(routes.remove):
                links.del_route(ipr, r.dst, gateway=r.gateway, ifname=device)
                log.info("route removed", extra={"dst": r.dst, "via": r.gateway, "dev": device})
            for n in sorted(neighs.remove):
                links.del_neigh(ipr, device, n.ip)
                log.info("neigh removed", extra={"ip": n.ip, "lladdr": n.mac, "dev": device})
            for f in sorted(fdb.remove):
                links.del_fdb(ipr, device, f.mac, f.dst)
                log.info("fdb removed", extra={"mac": f.mac, "dst": f.dst, "dev": device})
            # Neighbour and FDB before the route: the moment the route exists, packets use it.
            for f in sorted(fdb.add):
                links.set_fdb(ipr, device, f.mac, f.dst)
                log.info("fdb added", extra={"mac": f.mac, "dst": f.dst, "dev": device})
            for n in sorted(neighs.add):
                links.set_neigh(ipr, device, n.ip, n.mac)
                log.info("neigh added", extra={"ip": n.ip, "lladdr": n.mac, "dev": device})
            for r in sorted(routes.add):
                links.add_route(ipr, r.dst, gateway=r.gateway, ifname=device, onlink=True, replace=True)
                log.info("route added", extra={"dst": r.dst, "via": r.gateway, "dev": device, "onlink": True})
        return Changes(added=len(routes.add) + len(neighs.add) + len(fdb.add),
                       removed=len(routes.remove) + len(neighs.remove) + len(fdb.remove))
