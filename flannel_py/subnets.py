"""Subnet arithmetic and allocation (pure): key names, candidates, choosing a free subnet.

Keys are flannel's: `<a.b.c.d>-<len>` under `<prefix>/subnets/` (dual-stack flanneld appends
`&<ipv6>-<len>`; the IPv4 part is what counts here).

Allocation picks the lowest free subnet in [SubnetMin, SubnetMax] (flanneld picks at random among
the first free ones to lower contention; a deterministic choice makes the lab's node -> subnet
mapping predictable, and the create-if-absent transaction makes racing nodes safe either way).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from ipaddress import IPv4Address, IPv4Network

from flannel_py.config import NetworkConfig

_KEY = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&[0-9a-fA-F:]+-\d{1,3})?$")


class SubnetExhausted(RuntimeError):
    """Every subnet between SubnetMin and SubnetMax is leased."""


def subnet_key(subnet: IPv4Network) -> str:
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(name: str) -> IPv4Network:
    """The subnet of a key's last path element (`10.244.3.0-24`); ValueError if it is not one."""
    base = name.rsplit("/", 1)[-1]
    m = _KEY.match(base)
    if not m:
        raise ValueError(f"{base!r} is not a subnet key (want a.b.c.d-len)")
    try:
        return ipaddress.IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError as e:
        raise ValueError(f"{base!r} is not a subnet key: {e}") from None


def candidates(cfg: NetworkConfig) -> Iterator[IPv4Network]:
    """Every allocatable subnet, lowest first."""
    step = cfg.subnet_size
    for base in range(int(cfg.subnet_min), int(cfg.subnet_max) + 1, step):
        yield IPv4Network((base, cfg.subnet_len))


def capacity(cfg: NetworkConfig) -> int:
    return (int(cfg.subnet_max) - int(cfg.subnet_min)) // cfg.subnet_size + 1


def is_allocatable(cfg: NetworkConfig, subnet: IPv4Network) -> bool:
    """True if the subnet is one this config could hand out (right size, aligned, in range)."""
    return (subnet.prefixlen == cfg.subnet_len
            and cfg.subnet_min <= subnet.network_address <= cfg.subnet_max
            and subnet.subnet_of(cfg.network))


def allocate(cfg: NetworkConfig, taken: Collection[IPv4Network],
             preferred: IPv4Network | None = None, exclude: Collection[IPv4Network] = ()) -> IPv4Network:
    """The preferred subnet if it is allocatable and free, else the lowest free one.

    `exclude` holds subnets this caller just lost a race for (so a retry does not pick them again
    before its next listing shows the winner).
    """
    busy = set(taken) | set(exclude)
    if preferred is not None and is_allocatable(cfg, preferred) and preferred not in busy:
        return preferred
    for subnet in candidates(cfg):
        if subnet not in busy:
            return subnet
    raise SubnetExhausted(
        f"no free subnet: all {capacity(cfg)} /{cfg.subnet_len} subnets between {cfg.subnet_min} and "
        f"{cfg.subnet_max} in {cfg.network} are leased (enlarge Network, SubnetMin/SubnetMax or SubnetLen, "
        "or delete stale leases)")


def gateway(subnet: IPv4Network) -> IPv4Address:
    """The .1 of a node subnet: the pod bridge's address, and what FLANNEL_SUBNET names."""
    return subnet.network_address + 1
