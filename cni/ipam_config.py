"""host-local IPAM configuration (the reference plugin's keys), parsed and validated (pure)."""

from __future__ import annotations

import ipaddress
from collections import namedtuple

from cni.errors import INVALID_CONFIG, CniError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_DATA_DIR = "/var/lib/cni/networks"


# Named tuples rather than dataclasses: `collections` is loaded anyway (ipaddress needs it), while
# dataclasses imports inspect, a fifth of the direct path's start-up.
class Range(namedtuple("Range", "subnet start end gateway")):
    """One allocation range: subnet (IPNetwork), start, end, gateway (IPAddress or None)."""
    __slots__ = ()

    def __contains__(self, ip: IPAddress) -> bool:
        return ip.version == self.start.version and self.start <= ip <= self.end

    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


class Route(namedtuple("Route", "dst gw", defaults=(None,))):
    """An IPAM route: dst (IPNetwork), gw (IPAddress or None)."""
    __slots__ = ()

    def to_json(self) -> dict:
        out = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        return out


class HostLocalConfig:
    __slots__ = ("data_dir", "range_sets", "routes")

    def __init__(self, range_sets: list[list[Range]], routes: list[Route] | None = None,
                 data_dir: str = DEFAULT_DATA_DIR) -> None:
        self.range_sets = range_sets
        self.routes = routes or []
        self.data_dir = data_dir


def _err(msg: str) -> CniError:
    return CniError(INVALID_CONFIG, f"ipam: {msg}")


def _ip(value: object, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise _err(f"{what} {value!r} is not an IP address") from None


def parse_range(raw: object) -> Range:
    if not isinstance(raw, dict) or not raw.get("subnet"):
        raise _err(f"range {raw!r} has no subnet")
    try:
        subnet = ipaddress.ip_network(str(raw["subnet"]), strict=False)
    except ValueError:
        raise _err(f"subnet {raw['subnet']!r} is not a valid CIDR") from None
    if ipaddress.ip_address(str(raw["subnet"]).partition("/")[0]) != subnet.network_address:
        # host-local refuses these too: "10.1.0.5/24" or "fd00::1/64" is an address, not a range.
        raise _err(f"subnet {raw['subnet']!r} has host bits set (the network is {subnet})")
    usable_first = subnet.network_address + 1
    last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    if subnet.num_addresses < 4 or usable_first > last:
        raise _err(f"subnet {subnet} is too small to allocate addresses from")
    start = _ip(raw["rangeStart"], "rangeStart") if raw.get("rangeStart") else usable_first
    end = _ip(raw["rangeEnd"], "rangeEnd") if raw.get("rangeEnd") else last
    for what, ip in (("rangeStart", start), ("rangeEnd", end)):
        if ip.version != subnet.version or ip not in subnet or not usable_first <= ip <= last:
            raise _err(f"{what} {ip} is not a usable address of subnet {subnet}")
    if start > end:
        raise _err(f"rangeStart {start} is after rangeEnd {end}")
    gateway: IPAddress | None
    if raw.get("gateway"):
        gateway = _ip(raw["gateway"], "gateway")
        if gateway.version != subnet.version or gateway not in subnet:
            raise _err(f"gateway {gateway} is outside subnet {subnet}")
    else:
        gateway = usable_first  # host-local's default: the subnet's first address
    return Range(subnet=subnet, start=start, end=end, gateway=gateway)


def parse_host_local(ipam: dict) -> HostLocalConfig:
    if "ranges" in ipam:
        raw_sets = ipam["ranges"]
        if not isinstance(raw_sets, list) or not raw_sets or not all(
                isinstance(s, list) and s for s in raw_sets):
            raise _err("ranges must be a non-empty list of non-empty lists of ranges")
    elif ipam.get("subnet"):
        raw_sets = [[{k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}]]
    else:
        raise _err("host-local needs ranges or subnet")
    range_sets = [[parse_range(r) for r in s] for s in raw_sets]
    every = [r for s in range_sets for r in s]
    for i, a in enumerate(every):
        for b in every[i + 1:]:
            if a.subnet.version == b.subnet.version and a.start <= b.end and b.start <= a.end:
                raise _err(f"ranges {a.subnet} ({a.start}-{a.end}) and {b.subnet} ({b.start}-{b.end}) "
                           "overlap")
    for s in range_sets:
        if len({r.subnet.version for r in s}) != 1:
            raise _err("a range set mixes IPv4 and IPv6")
    routes = []
    for raw in ipam.get("routes") or []:
        if not isinstance(raw, dict) or "dst" not in raw:
            raise _err(f"route {raw!r} has no dst")
        try:
            dst = ipaddress.ip_network(str(raw["dst"]), strict=False)
        except ValueError:
            raise _err(f"route dst {raw['dst']!r} is not a valid CIDR") from None
        routes.append(Route(dst=dst, gw=_ip(raw["gw"], "route gw") if raw.get("gw") else None))
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise _err(f"dataDir {data_dir!r} must be an absolute path")
    return HostLocalConfig(range_sets=range_sets, routes=routes, data_dir=data_dir)
