"""/run/flannel/subnet.env: what flanneld tells the CNI plugin (and what a restart reads back).

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false

FLANNEL_SUBNET is the node subnet written with its .1 (the bridge's address), exactly as flanneld
writes it. A dual-stack node also gets FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET (its ::1),
after the IPv4 pair, as flanneld writes them. The file is replaced atomically (temp file + rename)
so a CNI ADD never reads half.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from ipaddress import IPv4Network, IPv6Network

from flannel_py.subnets import gateway


def render(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool,
           ipv6_network: IPv6Network | None = None, ipv6_subnet: IPv6Network | None = None) -> str:
    v6 = ""
    if ipv6_network is not None and ipv6_subnet is not None:
        v6 = (f"FLANNEL_IPV6_NETWORK={ipv6_network}\n"
              f"FLANNEL_IPV6_SUBNET={gateway(ipv6_subnet)}/{ipv6_subnet.prefixlen}\n")
    return (f"FLANNEL_NETWORK={network}\n"
            f"FLANNEL_SUBNET={gateway(subnet)}/{subnet.prefixlen}\n"
            f"{v6}"
            f"FLANNEL_MTU={mtu}\n"
            f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")


def parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip('"')
    return out


def write(path: str, network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool,
          ipv6_network: IPv6Network | None = None, ipv6_subnet: IPv6Network | None = None) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".subnet.env.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(network, subnet, mtu, ipmasq, ipv6_network, ipv6_subnet))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            return parse(f.read())
    except OSError:
        return {}


def previous_subnet(path: str) -> IPv4Network | None:
    """The node subnet recorded by an earlier run (None if there is no usable file)."""
    try:
        return ipaddress.IPv4Interface(_read(path)["FLANNEL_SUBNET"]).network
    except (KeyError, ValueError):
        return None


def previous_ipv6_subnet(path: str) -> IPv6Network | None:
    """The node's IPv6 subnet recorded by an earlier run (None if there is none)."""
    try:
        return ipaddress.IPv6Interface(_read(path)["FLANNEL_IPV6_SUBNET"]).network
    except (KeyError, ValueError):
        return None
