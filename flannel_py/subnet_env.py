"""/run/flannel/subnet.env: what flanneld tells the CNI plugin (and what a restart reads back).

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false

FLANNEL_SUBNET is the node subnet written with its .1 (the bridge's address), exactly as flanneld
writes it. The file is replaced atomically (temp file + rename) so a CNI ADD never reads half.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from ipaddress import IPv4Network

from flannel_py.subnets import gateway


def render(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> str:
    return (f"FLANNEL_NETWORK={network}\n"
            f"FLANNEL_SUBNET={gateway(subnet)}/{subnet.prefixlen}\n"
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


def write(path: str, network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".subnet.env.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(network, subnet, mtu, ipmasq))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def previous_subnet(path: str) -> IPv4Network | None:
    """The node subnet recorded by an earlier run (None if there is no usable file)."""
    try:
        with open(path) as f:
            values = parse(f.read())
    except OSError:
        return None
    try:
        return ipaddress.IPv4Interface(values["FLANNEL_SUBNET"]).network
    except (KeyError, ValueError):
        return None
