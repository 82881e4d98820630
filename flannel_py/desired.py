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

Dual-stack, as flanneld: IPv6 pod traffic takes the same shapes with the IPv6 members of the
leases. vxlan: on flannel-v6.<VNI> (a VTEP of its own, over the IPv6 underlay), route <ipv6 subnet>
via <its ::> onlink, neighbour <its ::> -> BackendV6Data's VtepMAC, FDB that MAC -> PublicIPv6.
host-gw: route <ipv6 subnet> via <PublicIPv6> dev <underlay>. A lease without an IPv6 subnet or
PublicIPv6 (a node whose flannel is not dual-stack) gets no IPv6 entries, and says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel_py.config import HOST_GW, VXLAN
from flannel_py.lease import Lease

FAMILIES = (4, 6)


@dataclass(frozen=True, order=True)
class Route:
    dst: str       # "10.244.2.0/24" ("fd00:10:244:2::/64")
    gateway: str   # "10.244.2.0" (vxlan) or "192.168.33.11" (host-gw); "fd00:10:244:2::", "fd00:33::11"


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


def family_of(lease: Lease, family: int) -> tuple[IPv4Network | IPv6Network | None,
                                                IPv4Address | IPv6Address | None, str | None]:
    """A lease's (subnet, public IP, VTEP MAC) in one address family (None where it has none)."""
    a = lease.attrs
    if family == 4:
        return lease.subnet, a.public_ip, a.vtep_mac
    return lease.ipv6_subnet, a.public_ipv6, a.vtep_mac_v6


def _remote(own: Lease, leases: Iterable[Lease], backend: str,
            family: int = 4) -> tuple[list[Lease], list[tuple[str, str]]]:
    use: list[Lease] = []
    skipped: list[tuple[str, str]] = []
    mine = family_of(own, family)[0]
    if mine is None:
        return use, skipped  # this node has no subnet in that family: nothing to route to in it
    seen: set[IPv4Network | IPv6Network] = set()
    present = [(subnet, lease) for lease in leases if (subnet := family_of(lease, family)[0]) is not None]
    for lease in leases:
        if family_of(lease, family)[0] is None and lease.subnet != own.subnet:
            skipped.append((str(lease.subnet), f"no IPv{family} subnet"))
    for subnet, lease in sorted(present, key=lambda item: item[0]):
        if subnet == mine or subnet in seen:
            continue
        seen.add(subnet)
        if subnet.overlaps(mine):
            skipped.append((str(subnet), f"overlaps own subnet {mine}"))
        elif lease.attrs.backend_type != backend:
            skipped.append((str(subnet), f"backend {lease.attrs.backend_type or 'none'}, not {backend}"))
        elif family_of(lease, family)[1] is None:
            skipped.append((str(subnet), f"no PublicIPv{family}"))
        else:
            use.append(lease)
    return use, skipped


def desired_vxlan(own: Lease, leases: Iterable[Lease], vni: int, family: int = 4) -> Desired:
    """The entries of one family's VXLAN device (flannel.<VNI>, or flannel-v6.<VNI> for 6)."""
    use, skipped = _remote(own, leases, VXLAN, family)
    routes: set[Route] = set()
    neighs: set[Neigh] = set()
    macs: dict[str, tuple[str, str]] = {}  # VtepMAC -> (subnet, public IP)
    for lease in use:
        subnet, public_ip, vtep_mac = family_of(lease, family)
        assert subnet is not None
        if lease.attrs.vni != vni:
            skipped.append((str(subnet), f"VNI {lease.attrs.vni}, not {vni}"))
            continue
        if vtep_mac is None:  # lease.decode() rejects such a vxlan lease; a hand-made one may lack it
            skipped.append((str(subnet), "no VtepMAC" if family == 4 else "no BackendV6Data"))
            continue
        if vtep_mac in macs:
            # Two leases claiming one VTEP MAC (a node that came back under a new subnet while
            # its old lease lives on): the FDB can hold one destination per MAC; keep the first.
            skipped.append((str(subnet), f"VtepMAC {vtep_mac} already used by {macs[vtep_mac][0]}"))
            continue
        vtep = str(subnet.network_address)
        routes.add(Route(str(subnet), vtep))
        neighs.add(Neigh(vtep, vtep_mac))
        macs[vtep_mac] = (str(subnet), str(public_ip))
    fdb = {Fdb(mac, dst) for mac, (_, dst) in macs.items()}
    return Desired(frozenset(routes), frozenset(neighs), frozenset(fdb), tuple(skipped))


def desired_hostgw(own: Lease, leases: Iterable[Lease]) -> Desired:
    """Routes of both families (IPv6 ones only on a dual-stack node) via the remote's public IP."""
    leases = list(leases)
    routes: set[Route] = set()
    skipped: list[tuple[str, str]] = []
    for family in FAMILIES:
        use, skipped_here = _remote(own, leases, HOST_GW, family)
        skipped += skipped_here
        for lease in use:
            subnet, public_ip, _ = family_of(lease, family)
            routes.add(Route(str(subnet), str(public_ip)))
    return Desired(routes=frozenset(routes), skipped=tuple(skipped))


@dataclass(frozen=True)
class Diff:
    add: frozenset
    remove: frozenset


def diff(desired: Iterable, actual: Iterable) -> Diff:
    want, have = frozenset(desired), frozenset(actual)
    return Diff(add=want - have, remove=have - want)
