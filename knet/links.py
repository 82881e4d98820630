"""Small netlink helpers over pyroute2 used by the CNI plugin, the overlay and the lab.

Every helper takes an open `IPRoute`, so a caller can bind it to any namespace with
`iproute(netns)` and batch many operations on one netlink socket.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Iterator

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


def mac_of(link) -> str:
    return link.get("IFLA_ADDRESS") or link.get("address")


def set_up(ipr: IPRoute, ifname: str) -> None:
    ipr.link("set", index=index(ipr, ifname), state="up")


def ensure_bridge(ipr: IPRoute, name: str, mtu: int | None = None, promisc: bool = False) -> int:
    """Create the bridge if missing (racing creators are fine), bring it up, return its index."""
    idx = index(ipr, name)
    if idx is None:
        try:
            kwargs = {"ifname": name, "kind": "bridge"}
            if mtu:
                kwargs["mtu"] = mtu
            ipr.link("add", **kwargs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        idx = index(ipr, name)
    else:
        kind = get_link(ipr, name).get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        if kind != "bridge":
            raise ValueError(f"{name} exists and is a {kind or 'non-bridge'} device, not a bridge")
    attrs = {"state": "up"}
    if promisc:
        attrs["flags"] = 0x100  # IFF_PROMISC
        attrs["change"] = 0x100
    ipr.link("set", index=idx, **attrs)
    return idx


def make_veth(ipr: IPRoute, name: str, peer: str, peer_netns_fd: int | None = None,
              mtu: int | None = None, master: int | None = None) -> int:
    """Create a veth pair; optionally move `peer` into another namespace and enslave `name`."""
    kwargs = {"ifname": name, "kind": "veth", "peer": {"ifname": peer}}
    if mtu:
        kwargs["mtu"] = mtu
        kwargs["peer"]["mtu"] = mtu
    ipr.link("add", **kwargs)
    idx = index(ipr, name)
    if peer_netns_fd is not None:
        ipr.link("set", index=index(ipr, peer), net_ns_fd=peer_netns_fd)
    if master is not None:
        ipr.link("set", index=idx, master=master)
    ipr.link("set", index=idx, state="up")
    return idx


def add_address(ipr: IPRoute, ifname: str, cidr: str) -> None:
    """Add an address (a.b.c.d/len) to a device; already present is fine."""
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.addr("add", index=index(ipr, ifname), address=str(iface.ip),
                 prefixlen=iface.network.prefixlen)
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
