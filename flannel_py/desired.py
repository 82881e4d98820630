"""From the set of leases to the kernel state one node needs (pure).

vxlan, per other node's lease (as flanneld programs it):
    route  <subnet> via <subnet .0> dev flannel.<VNI> onlink
    neigh  <subnet .0> lladdr <VtepMAC> dev flannel.<VNI> permanent
    fdb    <VtepMAC> dst <PublicIP> dev flannel.<VNI> self permanent
The .0 of every node subnet is that node's VTEP address (on its flannel.<VNI> as a /32), so the
route's gateway resolves through the permanent neighbour entry to the VTEP MAC, and the FDB maps
that MAC to the node's underlay address: no ARP and no flooding ever cross the overlay.

host-gw, per other node's lease:
    route  <subnet> via <PublicIP> dev <underlay>
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from flannel_py.config import HOST_GW, VXLAN
from flannel_py.lease import Lease


@dataclass(frozen=True, order=True)
class Route:
    dst: str       # "10.244.2.0/24"
    gateway: str   # "10.244.2.0" (vxlan) or "192.168.33.11" (host-gw)


@dataclass(frozen=True, order=True)
class Neigh:
    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class Fdb:
    mac: str
    dst: str


@dataclass(frozen=True)
class Desired:
    routes: frozenset[Route] = frozenset()
    neighs: frozenset[Neigh] = frozenset()
    fdb: frozenset[Fdb] = frozenset()
    # (subnet, reason) for leases that were left out, so the daemon can say why.
    skipped: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def _remote(own: Lease, leases: Iterable[Lease], backend: str) -> tuple[list[Lease], list[tuple[str, str]]]:
    use: list[Lease] = []
    skipped: list[tuple[str, str]] = []
    seen: set[IPv4Network] = set()
    for lease in sorted(leases, key=lambda item: item.subnet):
        if lease.subnet == own.subnet or lease.subnet in seen:
            continue
        seen.add(lease.subnet)
        if lease.subnet.overlaps(own.subnet):
            skipped.append((str(lease.subnet), f"overlaps own subnet {own.subnet}"))
        elif lease.attrs.backend_type != backend:
            skipped.append((str(lease.subnet), f"backend {lease.attrs.backend_type or 'none'}, not {backend}"))
        else:
            use.append(lease)
    return use, skipped


def desired_vxlan(own: Lease, leases: Iterable[Lease], vni: int) -> Desired:
    use, skipped = _remote(own, leases, VXLAN)
    routes: set[Route] = set()
    neighs: set[Neigh] = set()
    macs: dict[str, tuple[str, str]] = {}  # VtepMAC -> (subnet, public IP)
    for lease in use:
        a = lease.attrs
        if a.vni != vni:
            skipped.append((str(lease.subnet), f"VNI {a.vni}, not {vni}"))
            continue
        if a.vtep_mac is None:  # lease.decode() rejects such a vxlan lease; a hand-made one may lack it
            skipped.append((str(lease.subnet), "no VtepMAC"))
            continue
        if a.vtep_mac in macs:
            # Two leases claiming one VTEP MAC (a node that came back under a new subnet while
            # its old lease lives on): the FDB can hold one destination per MAC; keep the first.
            skipped.append((str(lease.subnet), f"VtepMAC {a.vtep_mac} already used by {macs[a.vtep_mac][0]}"))
            continue
        vtep = str(lease.subnet.network_address)
        routes.add(Route(str(lease.subnet), vtep))
        neighs.add(Neigh(vtep, a.vtep_mac))
        macs[a.vtep_mac] = (str(lease.subnet), str(a.public_ip))
    fdb = {Fdb(mac, dst) for mac, (_, dst) in macs.items()}
    return Desired(frozenset(routes), frozenset(neighs), frozenset(fdb), tuple(skipped))


def desired_hostgw(own: Lease, leases: Iterable[Lease]) -> Desired:
    use, skipped = _remote(own, leases, HOST_GW)
    routes = {Route(str(lease.subnet), str(lease.attrs.public_ip)) for lease in use}
    return Desired(routes=frozenset(routes), skipped=tuple(skipped))


@dataclass(frozen=True)
class Diff:
    add: frozenset
    remove: frozenset


def diff(desired: Iterable, actual: Iterable) -> Diff:
    want, have = frozenset(desired), frozenset(actual)
    return Diff(add=want - have, remove=have - want)
