"""Small netlink helpers over pyroute2 used by the CNI plugin, the overlay and the lab.

Every helper takes an open `IPRoute`, so a caller can bind it to any namespace with
`iproute(netns)` and batch many operations on one netlink socket.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from knet import netns as _netns


@contextlib.contextmanager
def iproute(netns: str | None = None) -> Iterator[IPRoute]:
    """An rtnetlink socket in the given namespace (a name or a path; None: the caller's)."""
    ipr = IPRoute(netns=_netns.path(netns)) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def get_link(ipr: IPRoute, ifname: str):
    """The link message for a name, or None. One RTM_GETLINK by name (link_lookup dumps all links)."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise


def index(ipr: IPRoute, ifname: str) -> int | None:
    link = get_link(ipr, ifname)
    return link["index"] if link is not None else None


def _index_of_new(ipr: IPRoute, ifname: str) -> int:
    """The index of a link just made (it vanishing at once is someone else's doing)."""
    idx = index(ipr, ifname)
    if idx is None:
        raise LookupError(f"link {ifname} is gone right after it was made")
    return idx


def mac_of(link) -> str:
    return link.get("IFLA_ADDRESS") or link.get("address")


def random_mac() -> str:
    """A random unicast, locally administered MAC address."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def set_up(ipr: IPRoute, ifname: str) -> None:
    ipr.link("set", index=index(ipr, ifname), state="up")


def ensure_bridge(ipr: IPRoute, name: str, mtu: int | None = None, promisc: bool = False) -> int:
    """Create the bridge if missing (racing creators are fine), bring it up, return its index."""
    idx = index(ipr, name)
    if idx is None:
        try:
            # An explicit MAC: otherwise the bridge takes its lowest port's MAC and changes it
            # whenever that port goes, leaving every pod with a stale gateway neighbour entry.
            kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "address": random_mac()}
            if mtu:
                kwargs["mtu"] = mtu
            ipr.link("add", **kwargs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        idx = _index_of_new(ipr, name)
    else:
        kind = get_link(ipr, name).get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        if kind != "bridge":
            raise ValueError(f"{name} exists and is a {kind or 'non-bridge'} device, not a bridge")
    attrs: dict[str, Any] = {"state": "up"}
    if promisc:
        attrs["flags"] = 0x100  # IFF_PROMISC
        attrs["change"] = 0x100
    ipr.link("set", index=idx, **attrs)
    return idx


def make_veth(ipr: IPRoute, name: str, peer: str, peer_netns_fd: int | None = None,
              mtu: int | None = None, master: int | None = None) -> int:
    """Create a veth pair; optionally move `peer` into another namespace and enslave `name`."""
    peer_args: dict[str, Any] = {"ifname": peer}
    kwargs: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer_args}
    if mtu:
        kwargs["mtu"] = mtu
        peer_args["mtu"] = mtu
    ipr.link("add", **kwargs)
    idx = _index_of_new(ipr, name)
    if peer_netns_fd is not None:
        ipr.link("set", index=index(ipr, peer), net_ns_fd=peer_netns_fd)
    if master is not None:
        ipr.link("set", index=idx, master=master)
    ipr.link("set", index=idx, state="up")
    return idx


IFA_F_NODAD = 0x02


def add_address(ipr: IPRoute, ifname: str, cidr: str, nodad: bool = False) -> None:
    """Add an address (a.b.c.d/len or IPv6) to a device; already present is fine. `nodad`: an
    IPv6 address usable at once, without duplicate address detection (one known to be unique)."""
    iface = ipaddress.ip_interface(cidr)
    extra = {"flags": IFA_F_NODAD} if nodad and iface.version == 6 else {}
    try:
        ipr.addr("add", index=index(ipr, ifname), address=str(iface.ip),
                 prefixlen=iface.network.prefixlen, **extra)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def addresses(ipr: IPRoute, ifname: str) -> list[str]:
    idx = index(ipr, ifname)
    if idx is None:
        return []
    return [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", index=idx)]


def add_route(ipr: IPRoute, dst: str, gateway: str | None = None, ifname: str | None = None,
              onlink: bool = False, replace: bool = False) -> None:
    net = ipaddress.ip_network(dst, strict=False)
    kwargs: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen}
    if net.version == 6:
        kwargs["family"] = 10
    if gateway:
        kwargs["gateway"] = gateway
    if ifname:
        kwargs["oif"] = index(ipr, ifname)
    if onlink:
        kwargs["flags"] = 4  # RTNH_F_ONLINK
    try:
        ipr.route("replace" if replace else "add", **kwargs)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def routes(ipr: IPRoute, family: int = 2) -> list[dict]:
    """Main-table unicast routes as {"dst", "gw", "oif"} dicts (dst "0.0.0.0/0" for default)."""
    out = []
    for r in ipr.route("dump", family=family, table=254):
        if r.get("type", 1) != 1:
            continue
        dst = r.get("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
        out.append({"dst": f"{dst}/{r['dst_len']}", "gw": r.get("RTA_GATEWAY"),
                    "oif": r.get("RTA_OIF")})
    return out


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    idx = index(ipr, ifname)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
        return False
    return True


# --- overlay helpers (VXLAN device, neighbour and FDB entries) used by flannel_py -----------------

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02


def mtu_of(ipr: IPRoute, ifname: str) -> int | None:
    link = get_link(ipr, ifname)
    return link.get("IFLA_MTU") if link is not None else None


def vxlan_attrs(link) -> dict | None:
    """IFLA_VXLAN_* attributes of a vxlan link message (None if the link is not vxlan)."""
    if link is None or link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
        return None
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    return dict(data["attrs"]) if data is not None else {}


def ensure_vxlan(ipr: IPRoute, name: str, vni: int, port: int, local: str, underlay: str,
                 mtu: int, learning: bool = False) -> tuple[int, bool]:
    """A vxlan device with exactly these parameters, up; returns (index, created).

    An existing device with the same VNI/port/local/underlay is kept as it is (its MAC, and
    every neighbour and FDB entry on it, survive a daemon restart); any other device of that
    name is replaced.
    """
    underlay_idx = index(ipr, underlay)
    if underlay_idx is None:
        raise ValueError(f"underlay interface {underlay} does not exist")
    local_key = "IFLA_VXLAN_LOCAL6" if ":" in local else "IFLA_VXLAN_LOCAL"  # an IPv6 underlay address
    link = get_link(ipr, name)
    attrs = vxlan_attrs(link)
    created = False
    if link is not None and (attrs is None or attrs.get("IFLA_VXLAN_ID") != vni
                             or attrs.get("IFLA_VXLAN_PORT") != port
                             or attrs.get(local_key) != local
                             or attrs.get("IFLA_VXLAN_LINK") != underlay_idx
                             or bool(attrs.get("IFLA_VXLAN_LEARNING")) != learning):
        delete_link(ipr, name)
        link = None
    if link is None:
        try:
            local_arg = {"vxlan_local6" if ":" in local else "vxlan_local": local}
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port, **local_arg,
                     vxlan_link=underlay_idx, vxlan_learning=1 if learning else 0, mtu=mtu)
            created = True
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        link = get_link(ipr, name)
    idx = link["index"]
    if link.get("IFLA_MTU") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    ipr.link("set", index=idx, state="up")
    return idx, created


def del_address(ipr: IPRoute, ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.addr("del", index=index(ipr, ifname), address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as e:
        if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


def del_route(ipr: IPRoute, dst: str, gateway: str | None = None, ifname: str | None = None) -> None:
    """Delete a main-table route; already gone is fine."""
    net = ipaddress.ip_network(dst, strict=False)
    kwargs: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen}
    if net.version == 6:
        kwargs["family"] = 10
    if gateway:
        kwargs["gateway"] = gateway
    if ifname:
        kwargs["oif"] = index(ipr, ifname)
    try:
        ipr.route("del", **kwargs)
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT):
            raise


def routes_via(ipr: IPRoute, ifname: str, family: int = 2) -> list[dict]:
    """Main-table unicast routes of the family (2: IPv4, 10: IPv6) whose output device is ifname
    ({"dst", "gw", "oif"})."""
    idx = index(ipr, ifname)
    return [r for r in routes(ipr, family) if idx is not None and r["oif"] == idx]


def default_route_ifname(ipr: IPRoute) -> str | None:
    for r in routes(ipr):
        if r["dst"] == "0.0.0.0/0" and r["oif"]:
            link = ipr.link("get", index=r["oif"])[0]
            return link.get("IFLA_IFNAME")
    return None


def neighbours(ipr: IPRoute, ifname: str, permanent_only: bool = True, family: int = 2) -> list[tuple[str, str]]:
    """(ip, mac) of the neighbour entries of the family (2: IPv4, 10: IPv6) on a device (by
    default only permanent ones)."""
    idx = index(ipr, ifname)
    if idx is None:
        return []
    out = []
    for n in ipr.neigh("dump", ifindex=idx, family=family):
        if permanent_only and not n["state"] & NUD_PERMANENT:
            continue
        if n.get("NDA_DST") and n.get("NDA_LLADDR"):
            out.append((n.get("NDA_DST"), n.get("NDA_LLADDR").lower()))
    return out


def set_neigh(ipr: IPRoute, ifname: str, ip: str, mac: str) -> None:
    """`ip neigh replace <ip> lladdr <mac> dev <ifname> nud permanent`."""
    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index(ipr, ifname), state=NUD_PERMANENT)


def del_neigh(ipr: IPRoute, ifname: str, ip: str) -> None:
    try:
        ipr.neigh("del", dst=ip, ifindex=index(ipr, ifname))
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise


def fdb_entries(ipr: IPRoute, ifname: str) -> list[tuple[str, str]]:
    """(mac, dst) of the device's FDB entries that point at a remote (vxlan) endpoint."""
    idx = index(ipr, ifname)
    if idx is None:
        return []
    out = []
    for n in ipr.fdb("dump", ifindex=idx):
        if n["ifindex"] == idx and n.get("NDA_DST") and n.get("NDA_LLADDR"):
            out.append((n.get("NDA_LLADDR").lower(), n.get("NDA_DST")))
    return out


def set_fdb(ipr: IPRoute, ifname: str, mac: str, dst: str) -> None:
    """`bridge fdb replace <mac> dev <ifname> dst <dst> self permanent`."""
    ipr.fdb("replace", ifindex=index(ipr, ifname), lladdr=mac, dst=dst,
            state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)


def del_fdb(ipr: IPRoute, ifname: str, mac: str, dst: str) -> None:
    try:
        ipr.fdb("del", ifindex=index(ipr, ifname), lladdr=mac, dst=dst)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise
