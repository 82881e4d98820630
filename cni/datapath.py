"""The kernel side of the plugin: bridge, veth pair, addresses and routes (pyroute2 netlink).

Runs in the caller's network namespace (the node); the pod side is reached through a netlink
socket opened in the pod's namespace, so no process ever has to switch namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni import masq
from cni.config import NetConf
from cni.errors import DATAPATH_FAILURE, UNKNOWN_CONTAINER, CniError
from knet import links, netns

IFF_PROMISC = 0x100


def open_netns(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist: {e.strerror}") from None
    # An ordinary file would be accepted by open(); only nsfs files can be joined.
    if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
        os.close(fd)
        raise CniError(UNKNOWN_CONTAINER, f"{path} is not a network namespace")
    return fd


@contextlib.contextmanager
def pod_iproute(path: str):
    fd = open_netns(path)
    os.close(fd)
    try:
        # The socket is bound to the namespace it is created in: create it from a thread that has
        # entered the pod's namespace (pyroute2's netns= option forks a helper process instead).
        with netns.enter(path):
            ipr = IPRoute()
    except Exception as e:
        raise CniError(UNKNOWN_CONTAINER, f"cannot enter network namespace {path}: {e}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _gateway_cidrs(ips: list[dict]) -> list[str]:
    out = []
    for entry in ips:
        if entry.get("gateway"):
            net = ipaddress.ip_interface(entry["address"]).network
            out.append(f"{entry['gateway']}/{net.prefixlen}")
    return out


def _gateway_for(family: int, ips: list[dict]) -> str | None:
    for entry in ips:
        if entry.get("gateway") and ipaddress.ip_address(entry["gateway"]).version == family:
            return entry["gateway"]
    return None


def pod_routes(conf: NetConf, ipam_result: dict) -> list[dict]:
    """Routes for the pod: the IPAM ones (gw defaulting to the range gateway) plus the default route."""
    ips = ipam_result.get("ips", [])
    out: list[dict] = []
    seen = set()
    for r in ipam_result.get("routes") or []:
        dst = ipaddress.ip_network(r["dst"], strict=False)
        gw = r.get("gw") or _gateway_for(dst.version, ips)
        route = {"dst": str(dst)}
        if gw:
            route["gw"] = gw
        out.append(route)
        seen.add(str(dst))
    if conf.wants_default_route:
        for family, default in ((4, "0.0.0.0/0"), (6, "::/0")):
            gw = _gateway_for(family, ips)
            if gw and default not in seen:
                out.append({"dst": default, "gw": gw})
    return out


def enable_forwarding(ips: list[dict]) -> None:
    """A gateway bridge routes for its pods (the reference plugin does the same)."""
    families = {ipaddress.ip_interface(e["address"]).version for e in ips}
    paths = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}
    for family in families:
        with open(paths[family], "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")


def setup(conf: NetConf, container_id: str, netns_path: str, ifname: str, ipam_result: dict) -> dict:
    """Wire the pod; on any failure remove what this call made and re-raise."""
    ips = ipam_result.get("ips", [])
    host_veth = "veth" + secrets.token_hex(4)
    routes = pod_routes(conf, ipam_result)
    fd = open_netns(netns_path)
    made_veth = False
    try:
        with pod_iproute(netns_path) as pod, links.iproute() as node:
            if links.index(pod, ifname) is not None:
                raise CniError(DATAPATH_FAILURE, f"interface {ifname} already exists in {netns_path}")
            br = links.ensure_bridge(node, conf.bridge, conf.mtu, conf.promisc_mode)
            if conf.is_gateway:
                for cidr in _gateway_cidrs(ips):
                    links.add_address(node, conf.bridge, cidr)
                enable_forwarding(ips)
            veth = {"ifname": host_veth, "kind": "veth", "peer": {"ifname": ifname, "net_ns_fd": fd}}
            if conf.mtu:
                veth["mtu"] = conf.mtu
                veth["peer"]["mtu"] = conf.mtu
            try:
                node.link("add", **veth)
            except NetlinkError as e:
                raise CniError(DATAPATH_FAILURE, f"cannot create veth pair {host_veth}/{ifname}: "
                               f"{os.strerror(e.code)}") from None
            made_veth = True
            host_idx = links.index(node, host_veth)
            node.link("set", index=host_idx, master=br, state="up")
            if conf.hairpin_mode:
                node.brport("set", index=host_idx, mode=1)
            pod.link("set", index=links.index(pod, "lo"), state="up")
            pod_idx = links.index(pod, ifname)
            pod.link("set", index=pod_idx, state="up")
            for entry in ips:
                links.add_address(pod, ifname, entry["address"])
            for r in routes:
                links.add_route(pod, r["dst"], gateway=r.get("gw"), ifname=ifname)
            if conf.ip_masq:
                masq.setup(conf.name, container_id, [e["address"] for e in ips])
            interfaces = [
                {"name": conf.bridge, "mac": links.mac_of(links.get_link(node, conf.bridge))},
                {"name": host_veth, "mac": links.mac_of(node.link("get", index=host_idx)[0])},
                {"name": ifname, "mac": links.mac_of(pod.link("get", index=pod_idx)[0]),
                 "sandbox": netns_path},
            ]
            if conf.mtu:
                for iface in interfaces[1:]:
                    iface["mtu"] = conf.mtu
    except BaseException:
        if made_veth:
            with links.iproute() as node:
                links.delete_link(node, host_veth)
        raise
    finally:
        os.close(fd)
    return {
        "interfaces": interfaces,
        "ips": [dict(e, interface=2) for e in ips],
        "routes": routes,
    }


def teardown(conf: NetConf, container_id: str, netns_path: str, ifname: str) -> None:
    """Remove the pod's interface (its veth peer goes with it) and the masquerade chain.
    Everything already gone is fine: DEL must be idempotent."""
    if netns_path:
        try:
            with pod_iproute(netns_path) as pod, contextlib.suppress(NetlinkError):
                links.delete_link(pod, ifname)
        except CniError:
            pass  # namespace already gone: the veth went with it
    if conf.ip_masq:
        masq.teardown(conf.name, container_id)


def check(conf: NetConf, netns_path: str, ifname: str, prev: dict) -> None:
    """Verify that what the previous result promised is still in place."""
    def fail(msg: str) -> CniError:
        return CniError(DATAPATH_FAILURE, f"CHECK: {msg}")

    with links.iproute() as node:
        if links.index(node, conf.bridge) is None:
            raise fail(f"bridge {conf.bridge} is missing")
        for iface in prev.get("interfaces", []):
            if not iface.get("sandbox") and links.index(node, iface.get("name", "")) is None:
                raise fail(f"host interface {iface.get('name')} is missing")
    pod_ifaces = [i for i, f in enumerate(prev.get("interfaces", [])) if f.get("sandbox")]
    with pod_iproute(netns_path) as pod:
        link = links.get_link(pod, ifname)
        if link is None:
            raise fail(f"interface {ifname} is missing from {netns_path}")
        for i in pod_ifaces:
            want = prev["interfaces"][i]
            if want.get("name") == ifname and want.get("mac") and want["mac"] != links.mac_of(link):
                raise fail(f"interface {ifname} has MAC {links.mac_of(link)}, expected {want['mac']}")
        have = set(links.addresses(pod, ifname))
        for entry in prev.get("ips", []):
            if entry.get("interface") is not None and entry["interface"] not in pod_ifaces:
                continue
            if entry["address"] not in have:
                raise fail(f"address {entry['address']} is missing from {ifname}")
        present = {(r["dst"], r["gw"]) for fam in (2, 10) for r in links.routes(pod, fam)}
        for r in prev.get("routes", []):
            dst = str(ipaddress.ip_network(r["dst"], strict=False))
            if not any(d == dst and (not r.get("gw") or g == r["gw"]) for d, g in present):
                raise fail(f"route {dst}" + (f" via {r['gw']}" if r.get("gw") else "") + " is missing")

