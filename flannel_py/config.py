"""flannel's network configuration (the JSON at <prefix>/config): parse, default and validate.

Defaults and checks follow flanneld's so that a config that works there works here:
SubnetLen 24 unless the Network is smaller than a /22 (then Network+2), at least four subnets,
SubnetMin = the second subnet (the first would collide with the network address), SubnetMax = the
last one, both on a SubnetLen boundary. Only the `vxlan` and `host-gw` backends exist here; a
config without a Backend means vxlan (flanneld's historic default `udp` is not implemented).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

VXLAN = "vxlan"
HOST_GW = "host-gw"
BACKENDS = (VXLAN, HOST_GW)
DEFAULT_VNI = 1
# The Linux kernel's historic VXLAN port; flannel leaves it to the kernel, which means 8472.
DEFAULT_PORT = 8472
# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
VXLAN_OVERHEAD = 50


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


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: Backend

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)


def parse_config(raw: str | bytes) -> NetworkConfig:
    """Parse and validate flannel's config JSON (raises ConfigError with a precise reason)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"network config is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("network config must be a JSON object")
    if doc.get("EnableIPv6"):
        raise ConfigError("EnableIPv6 is not supported (IPv4 only)")
    network = _network(doc.get("Network"))
    subnet_len = _subnet_len(doc.get("SubnetLen"), network)
    size = 1 << (32 - subnet_len)
    first = IPv4Address(int(network.network_address) + size)
    last = IPv4Address(int(network.broadcast_address) + 1 - size)
    subnet_min = _bound(doc.get("SubnetMin"), "SubnetMin", network, subnet_len, first)
    subnet_max = _bound(doc.get("SubnetMax"), "SubnetMax", network, subnet_len, last)
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")
    return NetworkConfig(network, subnet_len, subnet_min, subnet_max, _backend(doc.get("Backend")))


def _network(value: Any) -> IPv4Network:
    if not value:
        raise ConfigError("Network is missing (e.g. \"Network\": \"10.244.0.0/16\")")
    try:
        network = ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        raise ConfigError(f"Network {value!r} is not an IPv4 CIDR: {e}") from None
    if not isinstance(network, IPv4Network):
        raise ConfigError(f"Network {value!r} is not IPv4")
    return network


def _subnet_len(value: Any, network: IPv4Network) -> int:
    if value in (None, 0):
        if network.prefixlen > 28:
            raise ConfigError(f"Network {network} is too small: the smallest useful network is a /28")
        return 24 if network.prefixlen <= 22 else network.prefixlen + 2
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"SubnetLen must be an integer, not {value!r}")
    if value > 30:
        raise ConfigError(f"SubnetLen /{value} must be /30 or shorter (room for a gateway and pods)")
    if value < network.prefixlen + 2:
        raise ConfigError(f"SubnetLen /{value} leaves fewer than four subnets in Network {network}")
    return value


def _bound(value: Any, name: str, network: IPv4Network, subnet_len: int, default: IPv4Address) -> IPv4Address:
    if value in (None, ""):
        return default
    try:
        addr = IPv4Address(str(value))
    except ValueError:
        raise ConfigError(f"{name} {value!r} is not an IPv4 address") from None
    if addr not in network:
        raise ConfigError(f"{name} {addr} is not in the range of the Network {network}")
    if int(addr) % (1 << (32 - subnet_len)):
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
