"""What flannel_py leaves on a node, as uninstall steps (`knet uninstall-node` runs them):

    links     the VXLAN device flannel.<VNI> (its routes, neighbours and FDB entries go with it)
    routes    the static routes into the cluster Network it added (host-gw: `<subnet> via <node>`)
    iptables  FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter) and the jumps to them (`flannel_py.masq`)
    files     subnet.env

Not touched: the node's lease in etcd (it expires after its TTL; or delete <prefix>/subnets/<subnet>).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable

from flannel_py import masq, subnet_env
from flannel_py.daemon import DEFAULT_SUBNET_FILE
from knet import links
from knet.uninstall import Step, at, iptables_steps, link_steps, path_steps

DEVICE_PREFIX = "flannel."  # config.Backend.device: flannel.<VNI>
RTPROT_KERNEL = 2  # routes the kernel made from an address: they go with the address, not ours


def owns_chain(chain: str) -> bool:
    return chain in (masq.MASQ_CHAIN, masq.FWD_CHAIN)


def cluster_network(root: str = "/", given: str | None = None) -> ipaddress.IPv4Network | None:
    """The pod Network: `given`, else FLANNEL_NETWORK of the node's subnet.env (None: unknown)."""
    if given:
        return ipaddress.IPv4Network(given)
    try:
        with open(at(root, DEFAULT_SUBNET_FILE)) as f:
            return ipaddress.IPv4Network(subnet_env.parse(f.read())["FLANNEL_NETWORK"])
    except (OSError, KeyError, ValueError):
        return None


def uninstall_steps(root: str = "/", cluster_cidr: str | None = None) -> list[Step]:
    """`root`: where the node's / is mounted; `cluster_cidr`: the Network (default: subnet.env's)."""
    network = cluster_network(root, cluster_cidr)
    devices, routes = _links_and_routes(network)
    return [*link_steps(devices), *[Step(f"route {r}", (f"route {r}",), _delete_route(r)) for r in routes],
            *iptables_steps(owns_chain), *path_steps([at(root, DEFAULT_SUBNET_FILE)])]


def _links_and_routes(network: ipaddress.IPv4Network | None) -> tuple[list[str], list[str]]:
    with links.iproute() as ipr:
        dump = ipr.link("dump")
        names = {link["index"]: link.get("IFLA_IFNAME") for link in dump}
        devices = [name for link in dump if (name := link.get("IFLA_IFNAME") or "").startswith(DEVICE_PREFIX)
                   and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"]
        if network is None:
            return devices, []
        routes = []
        for r in ipr.route("dump", family=2, table=254):
            dst, plen, oif = r.get("RTA_DST"), r["dst_len"], r.get("RTA_OIF")
            if not dst or names.get(oif) in devices or r["proto"] == RTPROT_KERNEL:
                continue  # a device's routes go with it; an address's with the address
            if ipaddress.IPv4Network(f"{dst}/{plen}", strict=False).subnet_of(network):
                via = r.get("RTA_GATEWAY")
                routes.append(f"{dst}/{plen}" + (f" via {via}" if via else "") + f" dev {names.get(oif, '?')}")
    return devices, routes


def _delete_route(route: str) -> Callable[[], None]:
    def run() -> None:
        r = subprocess.run(["ip", "route", "del", *route.split()], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr.strip())
    return run
