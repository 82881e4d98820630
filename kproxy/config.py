"""kube-proxy's configuration file (KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1) as
kubeadm ships it in the `kube-proxy` ConfigMap, read into kproxy's settings (pure).

    settings = load("/var/lib/kube-proxy/config.conf")   # ConfigError: one line naming the field
    settings.mode, settings.sync_period, settings.conntrack.tcp_established_timeout, ...

The file is checked strictly: every field of v1alpha1 is known here, an unknown one is refused
(kube-proxy itself falls back to a lenient decode with a warning; a typo that silently changes
nothing is worse for an operator than a refusal), and so is a bad value of a field kproxy uses.
Fields that matter only to modes or platforms kproxy does not have (ipvs, winkernel, profiling,
client QPS) are accepted and not used. Zero values ("", "0s", null) mean "the default", as
kube-proxy's defaulting treats them; the defaults that depend on the mode live in
`with_defaults`, after flags are merged (flags override the file).

Durations are Go's (`1h0m0s`, `30s`, `100ms`, `1.5h`), as metav1.Duration writes them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
MODES = ("iptables", "nftables", "userspace", "ebpf")
DEFAULT_MODE = "iptables"
METRICS_PORT, HEALTHZ_PORT = 10249, 10256
MASQUERADE_BIT = 14  # kproxy's mark is 0x4000 (kube-proxy's default bit), which flannel's rules match too
# kube-proxy's defaults (pkg/proxy/apis/config/v1alpha1/defaults.go) and its proxiers' constants.
SYNC_PERIOD = 30.0
MIN_SYNC_PERIOD = 1.0
FULL_SYNC_PERIOD = 3600.0  # proxyutil.FullSyncPeriod: iptables and nftables rewrite everything hourly
NFTABLES_PERIODIC = 3600.0  # the nftables proxier's runner: no periodic partial sync under an hour
CONNTRACK_MAX_PER_CORE, CONNTRACK_MIN = 32 * 1024, 128 * 1024
TCP_ESTABLISHED_TIMEOUT, TCP_CLOSE_WAIT_TIMEOUT = 24 * 3600.0, 3600.0


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line naming the field."""


@dataclass(frozen=True)
class Conntrack:
    """conntrack sysctls kube-proxy sets (None: leave the kernel's value)."""
    max_per_core: int | None = None
    min: int | None = None
    tcp_established_timeout: float | None = None
    tcp_close_wait_timeout: float | None = None
    tcp_be_liberal: bool = False
    udp_timeout: float | None = None
    udp_stream_timeout: float | None = None


@dataclass(frozen=True)
class Settings:
    """What the file (or the flags) say; None where neither said anything."""
    mode: str | None = None
    hostname_override: str | None = None
    cluster_cidr: str | None = None
    bind_address: str | None = None
    metrics_bind_address: str | None = None
    healthz_bind_address: str | None = None
    masquerade_all: bool | None = None
    sync_period: float | None = None
    min_sync_period: float | None = None
    node_port_addresses: tuple[str, ...] | None = None
    conntrack: Conntrack = field(default_factory=Conntrack)
    kubeconfig: str | None = None
    oom_score_adj: int | None = None
    udp_idle_timeout: float | None = None
    logging_format: str | None = None
    ignored: tuple[str, ...] = ()  # fields set to something kproxy does not act on (logged)


# --- Go durations ----------------------------------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds ("1h0m0s" -> 3600.0; "0" alone is allowed)."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"{text!r} is not a duration (like 30s, 1m30s, 100ms)")
    total, pos = 0.0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"{text!r} is not a duration (like 30s, 1m30s, 100ms)")
    return sign * total


# --- the schema: every v1alpha1 field, and what kproxy does with it ---------------------------

USED, IGNORED = "used", "ignored"
_CLIENT = {"kubeconfig": USED, "acceptContentTypes": IGNORED, "contentType": IGNORED, "qps": IGNORED,
           "burst": IGNORED}
_STREAM = {"infoBufferSize": IGNORED, "splitStream": IGNORED}
_LOGGING = {"format": USED, "flushFrequency": IGNORED, "verbosity": IGNORED, "vmodule": IGNORED,
            "options": {"text": _STREAM, "json": _STREAM}}
_IPTABLES = {"masqueradeBit": USED, "masqueradeAll": USED, "localhostNodePorts": IGNORED,
             "snatNodeInternalIP": IGNORED, "syncPeriod": USED, "minSyncPeriod": USED}
_NFTABLES = {"masqueradeBit": USED, "masqueradeAll": USED, "syncPeriod": USED, "minSyncPeriod": USED}
_IPVS = {k: IGNORED for k in ("syncPeriod", "minSyncPeriod", "scheduler", "excludeCIDRs", "strictARP",
                              "tcpTimeout", "tcpFinTimeout", "udpTimeout", "masqueradeAll", "masqueradeBit")}
_CONNTRACK = {k: USED for k in ("maxPerCore", "min", "tcpEstablishedTimeout", "tcpCloseWaitTimeout",
                                "tcpBeLiberal", "udpTimeout", "udpStreamTimeout")}
_WINKERNEL = {k: IGNORED for k in ("networkName", "sourceVip", "enableDSR", "rootHnsEndpointName",
                                   "forwardHealthCheckVip")}
_DETECT_LOCAL = {"bridgeInterface": IGNORED, "interfaceNamePrefix": IGNORED, "clusterCIDRs": IGNORED}
SCHEMA: dict[str, Any] = {
    "apiVersion": USED, "kind": USED, "featureGates": IGNORED, "clientConnection": _CLIENT, "logging": _LOGGING,
    "hostnameOverride": USED, "bindAddress": USED, "healthzBindAddress": USED, "metricsBindAddress": USED,
    "bindAddressHardFail": IGNORED, "enableProfiling": IGNORED, "showHiddenMetricsForVersion": IGNORED,
    "mode": USED, "iptables": _IPTABLES, "ipvs": _IPVS, "nftables": _NFTABLES, "winkernel": _WINKERNEL,
    "detectLocalMode": USED, "detectLocal": _DETECT_LOCAL, "clusterCIDR": USED, "nodePortAddresses": USED,
    "oomScoreAdj": USED, "conntrack": _CONNTRACK, "configSyncPeriod": IGNORED, "portRange": IGNORED,
    "windowsRunAsService": IGNORED,
    # v1alpha1 before kube-proxy 1.26 removed its userspace mode; kproxy still has that mode.
    "udpIdleTimeout": USED,
}


def _check_fields(doc: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Refuse unknown fields; return the dotted names of known-but-ignored fields that are set."""
    ignored = []
    for key, value in doc.items():
        path = f"{prefix}{key}"
        kind = schema.get(key) if isinstance(key, str) else None
        if kind is None:
            raise ConfigError(f'unknown field "{path}"')
        if isinstance(kind, dict):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: must be a mapping, not {type(value).__name__}")
            ignored += _check_fields(value, kind, path + ".")
        elif kind == IGNORED and value not in (None, "", 0, False, [], {}, "0s", "0"):
            ignored.append(path)
    return ignored


# --- value readers ---------------------------------------------------------------------------

def _get(doc: Mapping[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _string(doc: Mapping[str, Any], path: str) -> str | None:
    v = _get(doc, path)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ConfigError(f"{path}: must be a string, not {v!r}")
    return v.strip()


def _bool(doc: Mapping[str, Any], path: str) -> bool | None:
    v = _get(doc, path)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise ConfigError(f"{path}: must be true or false, not {v!r}")
    return v


def _int(doc: Mapping[str, Any], path: str, low: int, high: int) -> int | None:
    v = _get(doc, path)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ConfigError(f"{path}: must be an integer from {low} to {high}, not {v!r}")
    return v


def _duration(doc: Mapping[str, Any], path: str, zero_is_unset: bool = True) -> float | None:
    v = _get(doc, path)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ConfigError(f"{path}: {v!r} is not a duration (like 30s, 1m30s, 100ms)")
    try:
        seconds = parse_duration(v)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    if seconds < 0:
        raise ConfigError(f"{path}: {v!r} must not be negative")
    return None if seconds == 0 and zero_is_unset else seconds


def check_mode(mode: str) -> str:
    if mode in MODES:
        return mode
    if mode in ("ipvs", "kernelspace"):
        raise ConfigError(f"mode {mode!r} is kube-proxy's, not kproxy's (one of {', '.join(MODES)})")
    raise ConfigError(f"mode {mode!r} is not a proxy mode (one of {', '.join(MODES)})")


def check_cidr(value: str, what: str = "clusterCIDR") -> str | None:
    """A CIDR, or a comma-separated dual-stack pair: normalized, the first of each family kept
    ("10.244.0.0/16,fd00:10:244::/56"; each family's proxier takes its own, `family_cidr`)."""
    found: dict[int, str] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not a CIDR") from None
        found.setdefault(net.version, str(net))
    return ",".join(found.values()) or None


def family_cidr(value: str | None, family: int) -> str | None:
    """The `family` (4 or 6) CIDR of a check_cidr value, or None."""
    for part in (value or "").split(","):
        if part and (":" in part) == (family == 6):
            return part
    return None


def check_address(value: str, what: str, default_port: int) -> str:
    """"host:port" (or a bare host, given the default port as kube-proxy's AppendPortIfNeeded)."""
    host, port = value, str(default_port)
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d*))?|([^:\[\]]*):(\d*)", value)
    if m:
        host = m.group(1) or m.group(3) or ""
        port = (m.group(2) if m.group(1) else m.group(4)) or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not an IP address with an optional port") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {value!r} has no valid port")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_node_port_addresses(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"nodePortAddresses: must be a list of CIDRs or \"primary\", not {values!r}")
    out = []
    for v in values:
        if v == "primary":
            out.append(v)
            continue
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise ConfigError(f'nodePortAddresses: {v!r} is not a CIDR or "primary"') from None
    return tuple(out)


# --- the file ----------------------------------------------------------------------------------

def parse(text: str, source: str = "config") -> Settings:
    """The settings a KubeProxyConfiguration document gives (YAML or JSON)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: not a KubeProxyConfiguration (a mapping with apiVersion and kind)")
    try:
        return _settings(doc)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load(path: str) -> Settings:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    return parse(text, path)


def _settings(doc: Mapping[str, Any]) -> Settings:
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ConfigError(f"apiVersion/kind {doc.get('apiVersion')!r}/{doc.get('kind')!r}: "
                          f"expected {API_VERSION} {KIND}")
    ignored = _check_fields(doc, SCHEMA)
    mode = _string(doc, "mode")
    if mode is not None:
        mode = check_mode(mode)
    section = "nftables" if mode == "nftables" else "iptables"  # kube-proxy's conversion does the same
    bit = _int(doc, f"{section}.masqueradeBit", 0, 31)
    if bit is not None and bit != MASQUERADE_BIT:
        raise ConfigError(f"{section}.masqueradeBit: {bit} is not supported: kproxy marks with bit "
                          f"{MASQUERADE_BIT} (0x4000), which flannel's masquerade rules also match")
    detect = _string(doc, "detectLocalMode")
    if detect not in (None, "ClusterCIDR"):
        raise ConfigError(f"detectLocalMode: {detect!r} is not supported (ClusterCIDR)")
    cidr = _string(doc, "clusterCIDR")
    npa = _get(doc, "nodePortAddresses")
    fmt = _string(doc, "logging.format")
    if fmt not in (None, "text", "json"):
        raise ConfigError(f"logging.format: {fmt!r} is not text or json")
    hostname = _string(doc, "hostnameOverride")
    metrics, healthz = _string(doc, "metricsBindAddress"), _string(doc, "healthzBindAddress")
    bind = _string(doc, "bindAddress")
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise ConfigError(f"bindAddress: {bind!r} is not an IP address") from None
    return Settings(
        mode=mode,
        hostname_override=hostname.lower() if hostname else None,
        cluster_cidr=check_cidr(cidr) if cidr else None,
        bind_address=bind,
        metrics_bind_address=check_address(metrics, "metricsBindAddress", METRICS_PORT) if metrics else None,
        healthz_bind_address=check_address(healthz, "healthzBindAddress", HEALTHZ_PORT) if healthz else None,
        masquerade_all=_bool(doc, f"{section}.masqueradeAll"),
        sync_period=_duration(doc, f"{section}.syncPeriod"),
        min_sync_period=_duration(doc, f"{section}.minSyncPeriod"),
        node_port_addresses=check_node_port_addresses(npa) if npa is not None else None,
        conntrack=Conntrack(
            max_per_core=_int(doc, "conntrack.maxPerCore", 0, 2**31 - 1),
            min=_int(doc, "conntrack.min", 0, 2**31 - 1),
            tcp_established_timeout=_duration(doc, "conntrack.tcpEstablishedTimeout"),
            tcp_close_wait_timeout=_duration(doc, "conntrack.tcpCloseWaitTimeout"),
            tcp_be_liberal=bool(_bool(doc, "conntrack.tcpBeLiberal")),
            udp_timeout=_duration(doc, "conntrack.udpTimeout"),
            udp_stream_timeout=_duration(doc, "conntrack.udpStreamTimeout"),
        ),
        kubeconfig=_string(doc, "clientConnection.kubeconfig"),
        oom_score_adj=_int(doc, "oomScoreAdj", -1000, 1000),
        udp_idle_timeout=_duration(doc, "udpIdleTimeout"),
        logging_format=fmt,
        ignored=tuple(ignored),
    )


# --- flags over the file, then the defaults ---------------------------------------------------

def merge(file: Settings, flags: Mapping[str, Any]) -> Settings:
    """`flags`: Settings field -> value given on the command line (None: not given). A flag wins."""
    given = {k: v for k, v in flags.items() if v is not None}
    conntrack = replace(file.conntrack, **{k[len("conntrack_"):]: given.pop(k)
                                           for k in list(given) if k.startswith("conntrack_")})
    return replace(file, conntrack=conntrack, **given)


@dataclass(frozen=True)
class Effective:
    """Settings with every default applied (what the daemon runs with)."""
    mode: str
    node_name: str
    cluster_cidr: str | None
    metrics_bind_address: str | None  # None: no metrics endpoint
    healthz_bind_address: str | None  # None: no health endpoint
    masquerade_all: bool
    sync_period: float  # kube-proxy's syncPeriod: the periodic (partial) sync, and the retry after a failure
    periodic_sync: float  # seconds between periodic syncs when nothing changes (nftables: hourly)
    min_sync_period: float
    full_sync_period: float
    node_port_addresses: tuple[str, ...]
    conntrack: Conntrack
    kubeconfig: str | None
    oom_score_adj: int | None
    udp_idle_timeout: float
    logging_format: str
    ignored: tuple[str, ...] = ()
    primary_family: int = 4  # kube-proxy's: the bind address's family (the other family is served too)


def with_defaults(s: Settings, hostname: str, full_sync_period: float | None = None) -> Effective:
    """kube-proxy's defaults for what neither the file nor the flags set. `hostname`: the node
    name when there is no hostnameOverride (kube-proxy: the machine's hostname)."""
    mode = s.mode or DEFAULT_MODE
    if s.node_port_addresses:
        raise ConfigError(f"nodePortAddresses {list(s.node_port_addresses)} is not supported yet: kproxy serves node "
                          "ports on every local address (kube-proxy's iptables default); leave it unset")
    bind_v6 = s.bind_address is not None and ":" in s.bind_address
    metrics = s.metrics_bind_address if s.metrics_bind_address is not None else \
        ("[::1]" if bind_v6 else "127.0.0.1") + f":{METRICS_PORT}"
    healthz = s.healthz_bind_address if s.healthz_bind_address is not None else \
        ("[::]" if bind_v6 else "0.0.0.0") + f":{HEALTHZ_PORT}"
    ct = s.conntrack
    conntrack = replace(
        ct, max_per_core=CONNTRACK_MAX_PER_CORE if ct.max_per_core is None else ct.max_per_core,
        min=CONNTRACK_MIN if ct.min is None else ct.min,
        tcp_established_timeout=TCP_ESTABLISHED_TIMEOUT if ct.tcp_established_timeout is None
        else ct.tcp_established_timeout,
        tcp_close_wait_timeout=TCP_CLOSE_WAIT_TIMEOUT if ct.tcp_close_wait_timeout is None
        else ct.tcp_close_wait_timeout)
    sync = s.sync_period if s.sync_period is not None else SYNC_PERIOD
    return Effective(
        mode=mode, node_name=(s.hostname_override or hostname).strip().lower(), cluster_cidr=s.cluster_cidr,
        metrics_bind_address=metrics or None, healthz_bind_address=healthz or None,
        masquerade_all=bool(s.masquerade_all), sync_period=sync,
        periodic_sync=max(sync, NFTABLES_PERIODIC) if mode == "nftables" else sync,
        min_sync_period=s.min_sync_period if s.min_sync_period is not None else MIN_SYNC_PERIOD,
        full_sync_period=full_sync_period if full_sync_period is not None else FULL_SYNC_PERIOD,
        node_port_addresses=s.node_port_addresses or (), conntrack=conntrack, kubeconfig=s.kubeconfig,
        oom_score_adj=s.oom_score_adj, udp_idle_timeout=s.udp_idle_timeout if s.udp_idle_timeout is not None
        else 60.0, logging_format=s.logging_format or "text", ignored=s.ignored,
        primary_family=6 if bind_v6 else 4)
