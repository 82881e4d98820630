"""Network configuration: parsing and validation of what arrives on stdin (pure logic).

Keys follow the reference `bridge` plugin so its conflists work with only `type` changed; the
knet-only keys are `agentSocket` (where the node agent listens) and `subnetFile` (flannel mode:
subnet, MTU and masquerade come from flannel's subnet.env, as flannel's own CNI plugin does).
"""

from __future__ import annotations

import ipaddress

from cni.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from cni.versions import SUPPORTED_VERSIONS

DEFAULT_AGENT_SOCKET = "/run/knet/cni.sock"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def valid_network_name(name: object) -> bool:
    """Letters, digits, '_', '.', '-', starting with a letter or digit (libcni's rule)."""
    return isinstance(name, str) and name != "" and name[0] not in "_.-" and set(name) <= _NAME_CHARS


class NetConf:
    """The parsed configuration. A plain class (not a dataclass, whose import pulls in inspect and
    costs the direct path a fifth of its start-up); `apply_subnet_file` fills some fields in."""

    def __init__(self, cni_version: str, name: str, type: str, bridge: str = "cni0",
                 is_gateway: bool = False, is_default_gateway: bool | None = None, ip_masq: bool = False,
                 hairpin_mode: bool = False, promisc_mode: bool = False, mtu: int | None = None,
                 ipam: dict | None = None, dns: dict | None = None, subnet_file: str | None = None,
                 agent_socket: str | None = None, prev_result: dict | None = None,
                 runtime_config: dict | None = None, valid_attachments: list[dict] | None = None,
                 raw: dict | None = None) -> None:
        self.cni_version = cni_version
        self.name = name
        self.type = type
        self.bridge = bridge
        self.is_gateway = is_gateway
        self.is_default_gateway = is_default_gateway
        self.ip_masq = ip_masq
        self.hairpin_mode = hairpin_mode
        self.promisc_mode = promisc_mode
        self.mtu = mtu
        self.ipam = ipam or {}
        self.dns = dns or {}
        self.subnet_file = subnet_file
        self.agent_socket = agent_socket
        self.prev_result = prev_result
        self.runtime_config = runtime_config or {}
        self.valid_attachments = valid_attachments
        self.raw = raw or {}

    @property
    def wants_default_route(self) -> bool:
        # The reference plugin only adds a default route for isDefaultGateway; knet also adds it
        # whenever the bridge is the gateway (what a pod expects) unless explicitly turned off.
        if self.is_default_gateway is not None:
            return self.is_default_gateway
        return self.is_gateway


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def check_version(conf: dict) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       "supported versions: " + ", ".join(SUPPORTED_VERSIONS))
    return version


def _get(conf: dict, key: str, kind: type | tuple[type, ...], default: object = None) -> object:
    value = conf.get(key, default)
    if value is None:
        return default
    # bool is an int subclass: never accept true/false where a number is meant, or vice versa.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CniError(INVALID_CONFIG, f"network configuration field {key!r} must be a {names}, "
                       f"got {value!r}")
    return value


def parse_netconf(conf: dict, command: str = "ADD") -> NetConf:
    version = check_version(conf)
    name = conf.get("name")
    if command != "VERSION" and not valid_network_name(name):
        raise CniError(INVALID_CONFIG, f"network name {name!r} is missing or invalid "
                       "(letters, digits, '_', '.', '-'; starting with a letter or digit)")
    bridge = _get(conf, "bridge", str, "cni0")
    if not 0 < len(bridge) <= 15 or "/" in bridge or " " in bridge:
        raise CniError(INVALID_CONFIG, f"bridge name {bridge!r} is not a valid interface name")
    mtu = _get(conf, "mtu", int)
    if mtu is not None and mtu != 0 and not 68 <= mtu <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu {mtu} is out of range (68-65535)")
    ipam = _get(conf, "ipam", dict, {})
    subnet_file = _get(conf, "subnetFile", str)
    if command == "ADD" and not ipam.get("type") and not subnet_file:
        raise CniError(INVALID_CONFIG, "network configuration has no ipam.type (and no subnetFile)")
    attachments = conf.get("cni.dev/valid-attachments")
    if command == "GC" and (not isinstance(attachments, list) or not all(
            isinstance(a, dict) and isinstance(a.get("containerID"), str) for a in attachments)):
        raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments: a list of "
                       "{containerID, ifname} objects")
    prev = _get(conf, "prevResult", dict)
    return NetConf(
        cni_version=version,
        name=name or "",
        type=_get(conf, "type", str, ""),
        bridge=bridge,
        is_gateway=_get(conf, "isGateway", bool, False),
        is_default_gateway=_get(conf, "isDefaultGateway", bool),
        ip_masq=_get(conf, "ipMasq", bool, False),
        hairpin_mode=_get(conf, "hairpinMode", bool, False),
        promisc_mode=_get(conf, "promiscMode", bool, False),
        mtu=mtu or None,
        ipam=ipam,
        dns=_get(conf, "dns", dict, {}),
        subnet_file=subnet_file,
        agent_socket=_get(conf, "agentSocket", str),
        prev_result=prev,
        runtime_config=_get(conf, "runtimeConfig", dict, {}),
        valid_attachments=attachments if isinstance(attachments, list) else None,
        raw=conf,
    )


def read_subnet_env(path: str) -> dict[str, str]:
    """flannel's subnet.env: KEY=VALUE lines (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_NETWORK,
    FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CniError(INVALID_CONFIG, f"cannot read subnetFile {path}: {e.strerror} "
                       "(is the overlay daemon running on this node?)") from None
    env = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            env[key] = value
    if "FLANNEL_SUBNET" not in env and "FLANNEL_IPV6_SUBNET" not in env:
        raise CniError(INVALID_CONFIG, f"subnetFile {path} has no FLANNEL_SUBNET (nor FLANNEL_IPV6_SUBNET)")
    return env


def apply_subnet_file(conf: NetConf) -> None:
    """Flannel mode: fill the subnets, routes, MTU and masquerade from subnet.env, as flannel's CNI
    plugin does when it delegates to bridge (the node's CNI config needs no per-node editing).
    Dual-stack (FLANNEL_IPV6_SUBNET present): one range set per family, a route to each family's
    cluster network."""
    if not conf.subnet_file:
        return
    env = read_subnet_env(conf.subnet_file)
    ranges: list[list[dict]] = []
    routes: list[dict] = []
    try:
        for subnet_key, network_key in (("FLANNEL_SUBNET", "FLANNEL_NETWORK"),
                                        ("FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK")):
            if env.get(subnet_key):
                ranges.append([{"subnet": str(ipaddress.ip_interface(env[subnet_key]).network)}])
                if env.get(network_key):
                    routes.append({"dst": str(ipaddress.ip_network(env[network_key]))})
        mtu = int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU") else None
    except (ValueError, KeyError) as e:
        raise CniError(INVALID_CONFIG, f"subnetFile {conf.subnet_file} is malformed: {e}") from None
    ipam = dict(conf.ipam)
    ipam.setdefault("type", "host-local")
    if not ipam.get("ranges") and not ipam.get("subnet"):
        ipam["ranges"] = ranges
    if "routes" not in ipam and routes:
        ipam["routes"] = routes
    conf.ipam = ipam
    if conf.mtu is None and mtu:
        conf.mtu = mtu
    if "isGateway" not in conf.raw:
        conf.is_gateway = True
    if "ipMasq" not in conf.raw:
        # flanneld masquerades itself when FLANNEL_IPMASQ=true, so the plugin must not as well.
        conf.ip_masq = env.get("FLANNEL_IPMASQ", "false") != "true"
