"""ClusterIP and nodePort allocation: the ranges (pure), and what is taken in them, in memory.

As in kube-apiserver (ServiceIPStaticSubrange / ServiceNodePortStaticSubrange), each range has a
lower "static" band that dynamic allocation uses only when the upper band is full, so an address
or port that a manifest names explicitly (the DNS service's tenth address, nodePort 30001) is
still free when that manifest is applied after other services exist.

What is taken is a bitmap per range (kube-apiserver's bitmap allocators), rebuilt from the
store's allocation keys at start and kept current from its watch (`Allocator.apply`), so picking
a free value costs the same with 10 Services or 30,000: nothing is listed per request. A request
reserves what it picks (`Reservation`) until its write has committed or failed, so two requests
in flight never pick one value; the etcd transaction that writes the allocation keys still
compares them as absent, which guards against other servers.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

DNS_SERVICE = ("kube-system", "kube-dns")
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
# The ranges' names (the etcd key part under `ranges/`), per family: kube-apiserver's name for
# the IPv4 one, and one beside it for IPv6 (whichever of them is the primary).
SERVICE_IPS = {"IPv4": "serviceips", "IPv6": "serviceipsv6"}
DEFAULT_NODE_PORTS = (30000, 32767)
PROBES = 32  # random probes before a scan: cheap while the range is sparse


class Space(Protocol):
    """A range values are allocated from: values <-> offsets first..last, and the static band."""

    @property
    def first(self) -> int: ...
    @property
    def last(self) -> int: ...
    @property
    def band(self) -> int: ...
    def offset(self, value: str) -> int | None: ...
    def value(self, offset: int) -> str: ...
    def check(self, value: str) -> str | None: ...


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
    def family(self) -> str:
        return "IPv6" if self.network.version == 6 else "IPv4"

    @property
    def size(self) -> int:
        """Usable addresses: the network address is never handed out (nor, in IPv4, broadcast)."""
        return min(self.network.num_addresses - (2 if self.network.version == 4 else 1), 1 << 20)

    @property
    def first(self) -> int:
        return 1

    @property
    def last(self) -> int:
        return self.size

    @property
    def band(self) -> int:
        return min(max(16, self.size // 16), 256)

    def address(self, offset: int) -> str:
        """The offset-th usable address (1 = the `kubernetes` service, 10 = cluster DNS)."""
        base = int(self.network.network_address)
        if self.network.version == 4:  # socket's C conversions: ipaddress costs ten times more
            return socket.inet_ntoa((base + offset).to_bytes(4, "big"))
        return str(ipaddress.IPv6Address(base + offset))

    value = address

    def offset(self, value: str) -> int | None:
        try:
            if self.network.version == 4:
                n = int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
            else:
                n = int(ipaddress.IPv6Address(value))
        except (OSError, ValueError):
            return None
        n -= int(self.network.network_address)
        return n if 1 <= n <= self.size else None

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

    def check(self, value: str) -> str | None:
        """Why an explicitly requested IP is not in this range (None: it is)."""
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        if not self.contains(value):
            return f"provided IP is not in the valid range. The range of valid IPs is {self.network}"
        return None


def parse_service_cidrs(text: str) -> tuple[ServiceCIDR, ...]:
    """kube-apiserver's --service-cluster-ip-range: one range, or two of different families
    (dual-stack), the primary first."""
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"service CIDR {text!r}: one range, or two (one per IP family) separated by a comma")
    cidrs = tuple(ServiceCIDR.parse(p) for p in parts)
    for c in cidrs:  # kube-apiserver's limit: at most 2^20 addresses per range
        bits = c.network.max_prefixlen
        if bits - c.network.prefixlen > 20:
            raise ValueError(f"specified service CIDR {c.network} is too large; for {bits}-bit addresses, the mask "
                             f"must be >= {bits - 20}")
    if len(cidrs) == 2 and cidrs[0].family == cidrs[1].family:
        raise ValueError(f"service CIDR {text!r}: a dual-stack range needs one IPv4 and one IPv6 CIDR")
    return cidrs


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

    @property
    def first(self) -> int:
        return self.low

    @property
    def last(self) -> int:
        return self.high

    @property
    def band(self) -> int:
        return min(max(16, (self.high - self.low + 1) // 32), 128)

    def offset(self, value: str) -> int | None:
        try:
            port = int(value)
        except ValueError:
            return None
        return port if self.low <= port <= self.high else None

    def value(self, offset: int) -> str:
        return str(offset)

    def check(self, value: str) -> str | None:
        if self.offset(value) is None:
            return f"provided port is not in the valid range. The range of valid ports is {self}"
        return None


class Allocator:
    """What is taken in one range: the store's allocations (`apply`, `reset`) and the values that
    requests in flight have reserved (`reserve`, `pick`, `unreserve`)."""

    def __init__(self, name: str, space: Space) -> None:
        self.name = name
        self.space = space
        self._used = bytearray(space.last - space.first + 1)  # 1: held by a stored object
        self._revision: dict[int, int] = {}  # index -> revision of the last change applied
        self._reserved: set[int] = set()

    def _index(self, value: str) -> int | None:
        offset = self.space.offset(value)
        return None if offset is None else offset - self.space.first

    def taken(self, value: str) -> bool:
        i = self._index(value)
        return i is not None and (bool(self._used[i]) or i in self._reserved)

    def __len__(self) -> int:
        """Values held by stored objects."""
        return self._used.count(1)

    # --- the store's view -------------------------------------------------------------------------

    def apply(self, value: str, held: bool, revision: int) -> None:
        """The allocation key of `value` exists (held) or not as of store revision `revision`.
        Changes arrive twice (from the request that made them and from the watch) and the watch
        may be behind the request: an older revision than the last applied is ignored."""
        i = self._index(value)
        if i is None or revision < self._revision.get(i, 0):
            return
        self._revision[i] = revision
        self._used[i] = 1 if held else 0

    def reset(self, values: Iterable[str], revision: int) -> None:
        """Everything held as of `revision` (a full listing): rebuilds the bitmap."""
        self._used = bytearray(len(self._used))
        self._revision = {}
        for value in values:
            self.apply(value, True, revision)

    # --- requests in flight -----------------------------------------------------------------------

    def reserve(self, value: str) -> str | None:
        """Hold an explicitly requested value for a request; why not (None: reserved)."""
        why = self.space.check(value)
        if why:
            return why
        if self.taken(value):
            return "provided IP is already allocated" if isinstance(self.space, ServiceCIDR) else \
                "provided port is already allocated"
        self._reserved.add(self._index(value))  # type: ignore[arg-type]  # checked by space.check
        return None

    def pick(self, rng: random.Random | None = None) -> str | None:
        """A free value (reserved for the caller): random in the upper band, else in the lower;
        None when the range is full."""
        rng = rng or random.Random()
        size = len(self._used)
        band = self.space.band if size > self.space.band else 0
        for lo, hi in ((band, size - 1), (0, band - 1)):
            if lo > hi:
                continue
            i = self._free_index(lo, hi, rng)
            if i is not None:
                self._reserved.add(i)
                return self.space.value(i + self.space.first)
        return None

    def _free_index(self, lo: int, hi: int, rng: random.Random) -> int | None:
        for _ in range(PROBES):
            i = rng.randint(lo, hi)
            if not self._used[i] and i not in self._reserved:
                return i
        start = rng.randint(lo, hi)
        for a, b in ((start, hi + 1), (lo, start)):  # from a random point to the end, then wrap
            i = self._used.find(0, a, b)
            while i >= 0 and i in self._reserved:
                i = self._used.find(0, i + 1, b)
            if i >= 0:
                return i
        return None

    def unreserve(self, value: str) -> None:
        i = self._index(value)
        if i is not None:
            self._reserved.discard(i)


@dataclass
class Reservation:
    """One request's reservations across ranges, dropped together when the request ends (after
    its write has been applied to the allocators, or has failed)."""
    allocators: Mapping[str, Allocator]
    rng: random.Random | None = None
    held: list[tuple[str, str]] = field(default_factory=list)

    def reserve(self, name: str, value: str) -> str | None:
        why = self.allocators[name].reserve(value)
        if why is None:
            self.held.append((name, value))
        return why

    def pick(self, name: str) -> str | None:
        value = self.allocators[name].pick(self.rng)
        if value is not None:
            self.held.append((name, value))
        return value

    def release(self) -> None:
        for name, value in self.held:
            self.allocators[name].unreserve(value)
        self.held.clear()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def allocators_from(spaces: Mapping[str, Space], held: Mapping[str, Iterable[str]] | None = None,
                    ) -> dict[str, Allocator]:
    """Allocators for named ranges, with `held` values already taken (tests, start-up)."""
    out = {}
    for name, space in spaces.items():
        out[name] = Allocator(name, space)
        out[name].reset((held or {}).get(name, ()), 1)
    return out
