"""flannel's network configuration (the JSON at <prefix>/config): parse, default and validate.

Defaults and checks follow flanneld's so that a config that works there works here:
SubnetLen 24 unless the Network is smaller than a /22 (then Network+2), at least four subnets,
SubnetMin = the second subnet (the first would collide with the network address), SubnetMax = the
last one, both on a SubnetLen boundary. Only the `vxlan` and `host-gw` backends exist here; a
config without a Backend means vxlan (flanneld's historic default `udp` is not implemented).

Dual-stack (`EnableIPv6`): the same rules for `IPv6Network`, `IPv6SubnetLen` (default /64, or
IPv6Network+2 when that is longer than a /62; at most /126; the network at most a /124) and
`IPv6SubnetMin`/`IPv6SubnetMax`. `EnableIPv4: false` (IPv6 only) is refused here.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

VXLAN = "vxlan"
HOST_GW = "host-gw"
BACKENDS = (VXLAN, HOST_GW)
DEFAULT_VNI = 1
# The Linux kernel's historic VXLAN port; flannel leaves it to the kernel, which means 8472.
DEFAULT_PORT = 8472
# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
VXLAN_OVERHEAD = 50
# The same over an IPv6 underlay (outer header 40): what the IPv6 device costs.
VXLAN_V6_OVERHEAD = 70


class ConfigError(ValueError):
    """The network configuration is not usable; the message says which field and why."""


@dataclass(frozen=True)
class Backend:
    type: str = VXLAN
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT

    @property
    def device(self) -> str:
        return f"flannel.{self.vni}"

    @property
    def device_v6(self) -> str:
        """flanneld's IPv6 VXLAN device (dual-stack): its own VTEP, over the IPv6 underlay."""
        return f"flannel-v6.{self.vni}"


@dataclass(frozen=True)
class SubnetPool:
    """One address family's plan: node subnets of `subnet_len` in [subnet_min, subnet_max] of
    `network` (the IPv6 one of a dual-stack config; NetworkConfig itself is the IPv4 one)."""
    network: IPv4Network | IPv6Network
    subnet_len: int
    subnet_min: IPv4Address | IPv6Address
    subnet_max: IPv4Address | IPv6Address

    @property
    def subnet_size(self) -> int:
        return 1 << (self.network.max_prefixlen - self.subnet_len)


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: Backend
    ipv6: SubnetPool | None = None  # EnableIPv6: IPv6Network, IPv6SubnetLen, IPv6SubnetMin/Max

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)


# The keys and limits of each family, as flanneld names and checks them.
_V4 = {"network": "Network", "len": "SubnetLen", "min": "SubnetMin", "max": "SubnetMax",
       "smallest": 28, "longest": 30, "default": 24, "default_up_to": 22}
_V6 = {"network": "IPv6Network", "len": "IPv6SubnetLen", "min": "IPv6SubnetMin", "max": "IPv6SubnetMax",
       "smallest": 124, "longest": 126, "default": 64, "default_up_to": 62}


def parse_config(raw: str | bytes) -> NetworkConfig:
    """Parse and validate flannel's config JSON (raises ConfigError with a precise reason)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"network config is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("network config must be a JSON object")
    if doc.get("EnableIPv4", True) is not True:
        raise ConfigError("EnableIPv4 false (an IPv6-only overlay) is not supported: dual-stack needs "
                          "the IPv4 Network as well")
    enable_v6 = doc.get("EnableIPv6", False)
    if not isinstance(enable_v6, bool):
        raise ConfigError(f"EnableIPv6 must be true or false, not {enable_v6!r}")
    v4 = _pool(doc, 4, _V4)
    ipv6 = _pool(doc, 6, _V6) if enable_v6 else None
    return NetworkConfig(v4.network, v4.subnet_len, v4.subnet_min, v4.subnet_max,  # type: ignore[arg-type]
                         _backend(doc.get("Backend")), ipv6)


def _pool(doc: dict, version: int, keys: dict[str, Any]) -> SubnetPool:
    network = _network(doc.get(keys["network"]), version, keys["network"])
    subnet_len = _subnet_len(doc.get(keys["len"]), network, keys)
    size = 1 << (network.max_prefixlen - subnet_len)
    first = network.network_address + size
    last = network.broadcast_address + 1 - size
    subnet_min = _bound(doc.get(keys["min"]), keys["min"], network, subnet_len, first)
    subnet_max = _bound(doc.get(keys["max"]), keys["max"], network, subnet_len, last)
    if int(subnet_min) > int(subnet_max):  # (one family: _bound checked both against the network)
        raise ConfigError(f"{keys['min']} {subnet_min} is above {keys['max']} {subnet_max}")
    return SubnetPool(network, subnet_len, subnet_min, subnet_max)


def _network(value: Any, version: int, name: str) -> IPv4Network | IPv6Network:
    example = "10.244.0.0/16" if version == 4 else "fd00:10:244::/56"
    if not value:
        raise ConfigError(f"{name} is missing (e.g. \"{name}\": \"{example}\")")
    try:
        network = ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        raise ConfigError(f"{name} {value!r} is not an IPv{version} CIDR: {e}") from None
    if network.version != version:
        raise ConfigError(f"{name} {value!r} is not IPv{version}")
    return network


def _subnet_len(value: Any, network: IPv4Network | IPv6Network, keys: dict[str, Any]) -> int:
    if value in (None, 0):
        if network.prefixlen > keys["smallest"]:
            raise ConfigError(f"{keys['network']} {network} is too small: the smallest useful network is "
                              f"a /{keys['smallest']}")
        return keys["default"] if network.prefixlen <= keys["default_up_to"] else network.prefixlen + 2
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{keys['len']} must be an integer, not {value!r}")
    if value > keys["longest"]:
        raise ConfigError(f"{keys['len']} /{value} must be /{keys['longest']} or shorter "
                          "(room for a gateway and pods)")
    if value < network.prefixlen + 2:
        raise ConfigError(f"{keys['len']} /{value} leaves fewer than four subnets in {keys['network']} {network}")
    return value


def _bound(value: Any, name: str, network: IPv4Network | IPv6Network, subnet_len: int,
           default: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    if value in (None, ""):
        return default
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        addr = None
    if addr is None or addr.version != network.version:
        raise ConfigError(f"{name} {value!r} is not an IPv{network.version} address")
    if addr not in network:
        raise ConfigError(f"{name} {addr} is not in the range of the Network {network}")
    if int(addr) % (1 << (network.max_prefixlen - subnet_len)):
        raise ConfigError(f"{name} {addr} is not on a SubnetLen (/{subnet_len}) boundary")
    return addr


def _backend(value: Any) -> Backend:
    if value is None:
        return Backend()
    if not isinstance(value, dict):
        raise ConfigError("Backend must be a JSON object such as {\"Type\": \"vxlan\"}")
    kind = value.get("Type", VXLAN)
    if kind not in BACKENDS:
        raise ConfigError(f"Backend Type {kind!r} is not supported (supported: {', '.join(BACKENDS)})")
    if kind == HOST_GW:
        return Backend(type=HOST_GW, vni=0, port=0)
    vni = value.get("VNI", DEFAULT_VNI)
    port = value.get("Port", DEFAULT_PORT)
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni < 1 << 24:
        raise ConfigError(f"Backend VNI {vni!r} must be an integer in 0..16777215")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"Backend Port {port!r} must be an integer in 0..65535 (0: the kernel default 8472)")
    return Backend(type=VXLAN, vni=vni, port=port or DEFAULT_PORT)
