"""Subnet arithmetic and allocation (pure): key names, candidates, choosing a free subnet.

Keys are flannel's: `<a.b.c.d>-<len>` under `<prefix>/subnets/`; a dual-stack lease's key appends
its IPv6 subnet, `&<ipv6>-<len>` (`10.244.1.0-24&fd00:10:244:1::-64`).

The functions work on either family's plan: the NetworkConfig (IPv4) or its `ipv6` SubnetPool.

Allocation picks the lowest free subnet in [SubnetMin, SubnetMax] (flanneld picks at random among
the first free ones to lower contention; a deterministic choice makes the lab's node -> subnet
mapping predictable, and the create-if-absent transaction makes racing nodes safe either way).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel_py.config import NetworkConfig, SubnetPool

_KEY = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([0-9a-fA-F:]+)-(\d{1,3}))?$")
Pool = NetworkConfig | SubnetPool
Subnet = IPv4Network | IPv6Network


class SubnetExhausted(RuntimeError):
    """Every subnet between SubnetMin and SubnetMax is leased."""


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    return key + (f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}" if ipv6_subnet else "")


def parse_key(name: str) -> tuple[IPv4Network, IPv6Network | None]:
    """The subnets of a key's last path element (`10.244.3.0-24`, or with `&fd00:10:244:3::-64`);
    ValueError if it is not one."""
    base = name.rsplit("/", 1)[-1]
    m = _KEY.match(base)
    if not m:
        raise ValueError(f"{base!r} is not a subnet key (want a.b.c.d-len[&ipv6-len])")
    try:
        v4 = ipaddress.IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
        v6 = ipaddress.IPv6Network(f"{m.group(3)}/{m.group(4)}", strict=True) if m.group(3) else None
    except ValueError as e:
        raise ValueError(f"{base!r} is not a subnet key: {e}") from None
    return v4, v6


def parse_subnet_key(name: str) -> IPv4Network:
    """The IPv4 subnet of a key (see parse_key)."""
    return parse_key(name)[0]


def candidates(cfg: Pool) -> Iterator[Subnet]:
    """Every allocatable subnet, lowest first."""
    step = cfg.subnet_size
    make = type(cfg.network)
    for base in range(int(cfg.subnet_min), int(cfg.subnet_max) + 1, step):
        yield make((base, cfg.subnet_len))


def capacity(cfg: Pool) -> int:
    return (int(cfg.subnet_max) - int(cfg.subnet_min)) // cfg.subnet_size + 1


def is_allocatable(cfg: Pool, subnet: Subnet) -> bool:
    """True if the subnet is one this plan could hand out (same family, right size, aligned, in range)."""
    return (subnet.version == cfg.network.version and subnet.prefixlen == cfg.subnet_len
            and cfg.subnet_min <= subnet.network_address <= cfg.subnet_max  # type: ignore[operator]
            and subnet.subnet_of(cfg.network))  # type: ignore[arg-type]


def allocate(cfg: Pool, taken: Collection[Subnet], preferred: Subnet | None = None,
             exclude: Collection[Subnet] = ()) -> Subnet:
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


def gateway(subnet: Subnet) -> IPv4Address | IPv6Address:
    """The .1 (::1) of a node subnet: the pod bridge's address, and what FLANNEL_SUBNET
    (FLANNEL_IPV6_SUBNET) names."""
    return subnet.network_address + 1
