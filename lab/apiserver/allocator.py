"""ClusterIP and nodePort choice (pure; the registry makes the choice atomic in etcd).

As in kube-apiserver (ServiceIPStaticSubrange / ServiceNodePortStaticSubrange), each range has a
lower "static" band that dynamic allocation uses only when the upper band is full, so an address
or port that a manifest names explicitly (the DNS service's tenth address, nodePort 30001) is
still free when that manifest is applied after other services exist.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

DNS_SERVICE = ("kube-system", "kube-dns")
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_PORTS = (30000, 32767)


@dataclass(frozen=True)
class ServiceCIDR:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    @classmethod
    def parse(cls, text: str) -> ServiceCIDR:
        net = ipaddress.ip_network(text, strict=True)
        if net.num_addresses < 8:
            raise ValueError(f"service CIDR {text} is too small (fewer than 8 addresses)")
        return cls(net)

    @property
    def size(self) -> int:
        """Usable addresses: the network address is never handed out (nor, in IPv4, broadcast)."""
        return min(self.network.num_addresses - (2 if self.network.version == 4 else 1), 1 << 20)

    def address(self, offset: int) -> str:
        """The offset-th usable address (1 = the `kubernetes` service, 10 = cluster DNS)."""
        return str(self.network.network_address + offset)

    @property
    def api_service_ip(self) -> str:
        return self.address(1)

    @property
    def dns_service_ip(self) -> str:
        return self.address(10)

    def contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr not in self.network or addr == self.network.network_address:
            return False
        return not (self.network.version == 4 and addr == self.network.broadcast_address)

    def check(self, ip: str, used: Collection[str]) -> str | None:
        """Why an explicitly requested IP cannot be had (None: it can)."""
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        if not self.contains(ip):
            return f"provided IP is not in the valid range. The range of valid IPs is {self.network}"
        if ip in used:
            return "provided IP is already allocated"
        return None

    def pick(self, used: Collection[str], rng: random.Random | None = None) -> str | None:
        band = min(max(16, self.size // 16), 256)
        return _pick(1, self.size, band, lambda o: self.address(o), used, rng)


@dataclass(frozen=True)
class NodePortRange:
    low: int = DEFAULT_NODE_PORTS[0]
    high: int = DEFAULT_NODE_PORTS[1]

    @classmethod
    def parse(cls, text: str) -> NodePortRange:
        """`30000-32767` (kube-apiserver's --service-node-port-range; a single port is a range of one)."""
        lo, _, hi = text.partition("-")
        low, high = int(lo), int(hi or lo)
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"invalid node port range {text!r}")
        return cls(low, high)

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def check(self, port: int, used: Collection[int]) -> str | None:
        if not self.low <= port <= self.high:
            return f"provided port is not in the valid range. The range of valid ports is {self}"
        if port in used:
            return "provided port is already allocated"
        return None

    def pick(self, used: Collection[int], rng: random.Random | None = None) -> int | None:
        size = self.high - self.low + 1
        band = min(max(16, size // 32), 128)
        return _pick(self.low, self.high, band, lambda p: p, used, rng)


def _pick(first: int, last: int, band: int, render: Callable[[int], Any], used: Collection,
          rng: random.Random | None) -> Any:
    """Random free value of the upper band, else of the lower; None when the range is full."""
    rng = rng or random.Random()
    split = first + band if last - first + 1 > band else first
    for lo, hi in ((split, last), (first, split - 1)):
        if lo > hi:
            continue
        # Random probing first (cheap while the range is sparse), then a scan that always finds a hole.
        for _ in range(32):
            value = render(rng.randint(lo, hi))
            if value not in used:
                return value
        offset = rng.randint(lo, hi)
        for i in range(hi - lo + 1):
            value = render(lo + (offset - lo + i) % (hi - lo + 1))
            if value not in used:
                return value
    return None
