"""The kernel side of the plugin: bridge, veth pair, addresses and routes (rtnetlink).

Runs in the caller's network namespace (the node) with a netlink socket there (`node`, which the
agent keeps open between requests); the pod side is reached through a socket opened in the pod's
namespace, so no process ever has to switch namespaces. Messages go in batches: an ADD is five
round trips to the kernel (bridge lookup; gateway address + veth pair + hairpin + its MAC; the
pod's interface check; lo and the interface up + its MAC; addresses + routes), a DEL one.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Iterator
from types import ModuleType

from cni import rtnl
from cni.config import NetConf
from cni.errors import DATAPATH_FAILURE, UNKNOWN_CONTAINER, CniError
from cni.rtnl import IFF_PROMISC, IFF_UP, NetlinkError, Rtnl


def masq() -> ModuleType:
    """cni.masq, imported on first use: it needs subprocess and hashlib, ~20% of the direct path's
    start-up, which only configurations with ipMasq should pay."""
    from cni import masq as module
    return module


def open_netns(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist: {e.strerror}") from None
    # An ordinary file would be accepted by open(); only nsfs files can be joined.
    if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
        os.close(fd)
        raise CniError(UNKNOWN_CONTAINER, f"{path} is not a network namespace")
    return fd


@contextlib.contextmanager
def pod_socket(path: str, fd: int | None = None) -> Iterator[Rtnl]:
    """A netlink socket in the pod's namespace (given by path, or already open as fd)."""
    own_fd = fd is None
    if own_fd:
        fd = open_netns(path)
    try:
        sock = rtnl.in_netns(fd)
    except OSError as e:
        raise CniError(UNKNOWN_CONTAINER, f"cannot enter network namespace {path}: {e}") from None
    finally:
        if own_fd:
            os.close(fd)
    try:
        yield sock
    finally:
        sock.close()


def _failed(what: str, e: NetlinkError) -> CniError:
    return CniError(DATAPATH_FAILURE, f"{what}: {e.strerror}")


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


def ensure_bridge(node: Rtnl, conf: NetConf) -> rtnl.Link:
    """The bridge, made if missing (racing creators are fine) and up; in promiscuous mode if asked."""
    want = IFF_UP | (IFF_PROMISC if conf.promisc_mode else 0)
    try:
        link = node.link(conf.bridge)
        if link is None:
            # An explicit MAC: otherwise the bridge takes its lowest port's MAC and changes it
            # whenever that port goes, leaving every pod with a stale gateway neighbour entry.
            node.request(rtnl.new_bridge(conf.bridge, rtnl.random_mac(), conf.mtu, want), errno.EEXIST)
            link = node.link(conf.bridge)
            if link is None:
                raise NetlinkError(errno.ENODEV, "created, then gone")
        if link.kind != "bridge":
            raise CniError(DATAPATH_FAILURE, f"{conf.bridge} exists and is a {link.kind or 'non-bridge'} "
                           "device, not a bridge")
        if link.flags & want != want:
            node.request(rtnl.set_flags(conf.bridge, want, want))
    except NetlinkError as e:
        raise _failed(f"cannot set up bridge {conf.bridge}", e) from None
    return link


def setup(conf: NetConf, container_id: str, netns_path: str, ifname: str, ipam_result: dict,
          node: Rtnl) -> dict:
    """Wire the pod; on any failure remove what this call made and re-raise."""
    ips = ipam_result.get("ips", [])
    host_veth = "veth" + os.urandom(4).hex()
    routes = pod_routes(conf, ipam_result)
    fd = open_netns(netns_path)
    made_veth = False
    try:
        with pod_socket(netns_path, fd) as pod:
            if pod.link(ifname) is not None:
                raise CniError(DATAPATH_FAILURE, f"interface {ifname} already exists in {netns_path}")
            bridge = ensure_bridge(node, conf)
            gateways = _gateway_cidrs(ips) if conf.is_gateway else []
            if gateways:
                enable_forwarding(ips)
            batch = [rtnl.new_address(bridge.index, cidr) for cidr in gateways]
            batch.append(rtnl.new_veth(host_veth, ifname, fd, bridge.index, conf.mtu))
            if conf.hairpin_mode:
                batch.append(rtnl.set_hairpin(host_veth))
            batch.append(rtnl.get_link(host_veth))
            *gw_replies, veth_reply, host_reply = node.batch(batch)
            try:
                veth_reply.check()
            except NetlinkError as e:
                raise _failed(f"cannot create veth pair {host_veth}/{ifname}", e) from None
            made_veth = True
            try:
                for reply in gw_replies:
                    reply.check(errno.EEXIST)
                host = rtnl.parse_link(host_reply.check().messages[0])
                *_up, pod_reply = pod.batch([rtnl.set_flags("lo", IFF_UP, IFF_UP),
                                             rtnl.set_flags(ifname, IFF_UP, IFF_UP), rtnl.get_link(ifname)])
                for reply in _up:
                    reply.check()
                inside = rtnl.parse_link(pod_reply.check().messages[0])
                config = [rtnl.new_address(inside.index, e["address"]) for e in ips]
                config += [rtnl.new_route(r["dst"], r.get("gw"), inside.index) for r in routes]
                for reply in pod.batch(config):
                    reply.check(errno.EEXIST)
            except NetlinkError as e:
                raise _failed(f"cannot configure {host_veth}/{ifname}", e) from None
            if conf.ip_masq:
                masq().setup(conf.name, container_id, [e["address"] for e in ips])
            interfaces = [
                {"name": conf.bridge, "mac": bridge.mac},
                {"name": host_veth, "mac": host.mac},
                {"name": ifname, "mac": inside.mac, "sandbox": netns_path},
            ]
            if conf.mtu:
                for iface in interfaces[1:]:
                    iface["mtu"] = conf.mtu
    except BaseException:
        if made_veth:
            node.batch([rtnl.del_link(host_veth)])  # its peer goes with it; already gone is fine
        raise
    finally:
        os.close(fd)
    return {
        "interfaces": interfaces,
        "ips": [dict(e, interface=2) for e in ips],
        "routes": routes,
    }


def teardown(conf: NetConf, container_id: str, netns_path: str, ifname: str, addresses: list[str]) -> None:
    """Remove the pod's interface (its veth peer goes with it) and the masquerade chain
    (`addresses`: what IPAM had reserved, so the chain goes in one step). Everything already
    gone is fine: DEL must be idempotent.

    The chain goes while the interface does: the kernel's deletion of a veth pair waits out RCU
    grace periods (15-20 ms here, in the netlink call), time in which iptables-restore can run.
    Neither depends on the other (the chain is the attachment's own), and both are done before
    IPAM releases the addresses."""
    masq_failed: list[BaseException] = []
    masq_thread = None
    if conf.ip_masq:
        masq_module = masq()
        import threading  # (imported already: cni.masq uses subprocess, which uses threading)

        def remove_chain() -> None:
            try:
                masq_module.teardown(conf.name, container_id, addresses)
            except BaseException as e:
                masq_failed.append(e)

        masq_thread = threading.Thread(target=remove_chain, name="masq-teardown")
        masq_thread.start()  # (it runs in this thread's network namespace: the node's)
    try:
        if netns_path:
            try:
                with pod_socket(netns_path) as pod:
                    pod.request(rtnl.del_link(ifname), errno.ENODEV)
            except CniError:
                pass  # namespace already gone: the veth went with it
            except NetlinkError as e:
                raise _failed(f"cannot delete {ifname} in {netns_path}", e) from None
    finally:
        if masq_thread is not None:
            masq_thread.join()
    if masq_failed:
        raise masq_failed[0]


def check(conf: NetConf, netns_path: str, ifname: str, prev: dict, node: Rtnl) -> None:
    """Verify that what the previous result promised is still in place."""
    def fail(msg: str) -> CniError:
        return CniError(DATAPATH_FAILURE, f"CHECK: {msg}")

    if node.link(conf.bridge) is None:
        raise fail(f"bridge {conf.bridge} is missing")
    for iface in prev.get("interfaces", []):
        if not iface.get("sandbox") and node.link(iface.get("name", "")) is None:
            raise fail(f"host interface {iface.get('name')} is missing")
    pod_ifaces = [i for i, f in enumerate(prev.get("interfaces", [])) if f.get("sandbox")]
    with pod_socket(netns_path) as pod:
        link = pod.link(ifname)
        if link is None:
            raise fail(f"interface {ifname} is missing from {netns_path}")
        for i in pod_ifaces:
            want = prev["interfaces"][i]
            if want.get("name") == ifname and want.get("mac") and want["mac"] != link.mac:
                raise fail(f"interface {ifname} has MAC {link.mac}, expected {want['mac']}")
        have = set(pod.addresses(link.index))
        for entry in prev.get("ips", []):
            if entry.get("interface") is not None and entry["interface"] not in pod_ifaces:
                continue
            if entry["address"] not in have:
                raise fail(f"address {entry['address']} is missing from {ifname}")
        present = {(r["dst"], r["gw"]) for r in pod.routes()}
        for r in prev.get("routes", []):
            dst = str(ipaddress.ip_network(r["dst"], strict=False))
            if not any(d == dst and (not r.get("gw") or g == r["gw"]) for d, g in present):
                raise fail(f"route {dst}" + (f" via {r['gw']}" if r.get("gw") else "") + " is missing")
