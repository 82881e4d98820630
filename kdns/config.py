"""What kdns serves, from a Corefile (the subset of CoreDNS kdns implements) or from its flags.

Plugins, with CoreDNS's syntax:

    kubernetes ZONE [REVERSE-ZONES...] { pods disabled|insecure|verified; ttl N;
                                         fallthrough [ZONES...]; kubeconfig FILE [CONTEXT];
                                         startup_timeout DURATION }
    forward FROM TO... { except NAMES...; policy random|round_robin|sequential; max_concurrent N;
                         max_fails N; health_check DURATION [no_rec] [domain FQDN]; expire DURATION;
                         read_timeout DURATION; force_tcp; prefer_udp; failover RCODE... }
    cache [TTL] { success CAPACITY [TTL [MINTTL]]; denial CAPACITY [TTL [MINTTL]];
                  prefetch AMOUNT [DURATION [PERCENTAGE%]];
                  serve_stale [DURATION [immediate|verify [RESPONSE_TTL]]] }
    autopath @kubernetes      errors      log      bind ADDRESS...      loop
    loadbalance [round_robin]
    health [ADDRESS] { lameduck DURATION }      ready [ADDRESS]      prometheus [ADDRESS]
    reload [INTERVAL [JITTER]]

TO is an address (`IP`, `IP:PORT`, `dns://IP`, `[IPv6]:PORT`) or a resolv.conf-style file whose
nameservers are used. Server blocks for other zones on the same port (`consul.local:53 { forward
. 10.150.0.1 }`) are stub domains: a query goes to the block with the longest matching zone.

Anything else is refused with a message naming it and its line: an unknown plugin, an option kdns
does not implement (`forward ... { tls ... }`), a value out of range. A refused Corefile changes
nothing (at start: kdns exits; on reload: the running configuration stays).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass

from kdns.corefile import CorefileError, Directive, ServerBlock, parse
from kdns.fcache import CacheConfig, Prefetch, ServeStale
from kdns.forward import POLICIES, Upstream
from kdns.wire import RCODE_NAMES

REVERSE_SUFFIXES = ("in-addr.arpa", "ip6.arpa")
PLUGINS = ("kubernetes", "forward", "cache", "autopath", "errors", "log", "health", "ready", "reload",
           "prometheus", "bind", "loop", "loadbalance")
ONCE = ("kubernetes", "cache", "autopath", "errors", "log", "health", "ready", "reload", "prometheus", "bind",
        "loop", "loadbalance")


@dataclass(frozen=True)
class KubernetesConfig:
    zone: str  # the cluster domain
    reverse_zones: tuple[str, ...] = ()
    pods: str = "disabled"  # CoreDNS's default
    ttl: int = 5
    negative_ttl: int | None = None  # the SOA's MINIMUM (how long clients keep a miss); None: ttl
    fallthrough: tuple[str, ...] | None = None  # None: never; (): every zone of the plugin
    kubeconfig: str | None = None
    context: str | None = None
    startup_timeout: float | None = None  # None: --sync-timeout

    def falls_through(self, zone: str) -> bool:
        return self.fallthrough is not None and (not self.fallthrough or zone in self.fallthrough)


@dataclass(frozen=True)
class ForwardConfig:
    zone: str  # FROM ("" for the root)
    to: tuple[Upstream, ...]
    excepted: tuple[str, ...] = ()
    policy: str = "random"
    max_concurrent: int = 0
    max_fails: int = 2
    health_check: float = 0.5
    health_domain: str = ""  # the root: `. IN NS`
    health_rd: bool = True
    expire: float = 10.0
    timeout: float = 2.0
    force_tcp: bool = False
    failover: frozenset[int] = frozenset()


@dataclass(frozen=True)
class BlockConfig:
    zones: tuple[str, ...]  # normalised, "" for the root
    port: int = 53
    bind: tuple[str, ...] = ()
    kubernetes: KubernetesConfig | None = None
    forwards: tuple[ForwardConfig, ...] = ()
    cache: CacheConfig | None = None
    autopath: bool = False
    log: bool = False
    errors: bool = False
    loop: bool = False
    loadbalance: bool = False  # shuffle A/AAAA/MX answers (CoreDNS's loadbalance round_robin)

    @property
    def label(self) -> str:
        """The `zone` label of CoreDNS's metrics: the first zone, fully qualified."""
        return (self.zones[0] + "." if self.zones[0] else ".") if self.zones else "."


@dataclass(frozen=True)
class Settings:
    blocks: tuple[BlockConfig, ...]
    health: str | None = None  # "host:port" of /health
    lameduck: float = 0.0
    ready: str | None = None  # "host:port" of /ready
    prometheus: str | None = None  # "host:port" of /metrics
    reload: tuple[float, float] | None = None  # (interval, jitter) seconds
    source: str = "flags"

    @property
    def kubernetes(self) -> KubernetesConfig | None:
        for b in self.blocks:
            if b.kubernetes is not None:
                return b.kubernetes
        return None

    @property
    def port(self) -> int:
        return self.blocks[0].port if self.blocks else 53

    def listen(self) -> list[tuple[str, int]]:
        """Every address kdns listens on (the bind addresses of every block, or all of them)."""
        out: list[tuple[str, int]] = []
        for b in self.blocks:
            for host in b.bind or ("0.0.0.0",):
                if (host, b.port) not in out:
                    out.append((host, b.port))
        return out


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str, where: str) -> float:
    """A Go duration (`500ms`, `1m30s`, `2h`) in seconds; a bare number is seconds (as CoreDNS's
    `cache` reads TTLs)."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise CorefileError(f"{where}: {text!r} is not a duration (like 500ms, 30s, 1h)")
    return total


def _int(text: str, where: str, low: int = 0, high: int = 2**31 - 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CorefileError(f"{where}: {text!r} is not a number") from None
    if not low <= value <= high:
        raise CorefileError(f"{where}: {value} is outside {low}..{high}")
    return value


def _address(text: str, where: str, default_port: int) -> str:
    """`[HOST]:PORT` as host:port ("" host: every address)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    _int(port, where, 1, 65535)
    return f"{host.strip('[]')}:{port}"


def _block_key(key: str, line: int) -> tuple[str, int]:
    text = key.removeprefix("dns://")
    if "://" in text:
        raise CorefileError(f"line {line}: server block {key!r}: kdns serves plain DNS (dns://) only")
    zone, _, port = text.partition(":")
    return normalize(zone), _int(port, f"line {line}: port of {key!r}", 1, 65535) if port else 53


def read_resolv_conf(path: str) -> list[Upstream]:
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append(Upstream(parts[1].split("%")[0]))
    return out


def from_corefile(text: str, read: Callable[[str], list[Upstream]] = read_resolv_conf) -> Settings:
    """Settings from a Corefile's text; CorefileError naming the line and what is wrong."""
    blocks = parse(text)
    if not blocks:
        raise CorefileError("the Corefile has no server block")
    out: list[BlockConfig] = []
    server: dict[str, object] = {}
    for sb in blocks:
        out.append(_block(sb, server, read))
    ports = {b.port for b in out}
    if len(ports) > 1:
        raise CorefileError(f"server blocks on several ports ({', '.join(map(str, sorted(ports)))}): kdns serves one")
    zones = [z for b in out for z in b.zones]
    dup = sorted({z for z in zones if zones.count(z) > 1})
    if dup:
        raise CorefileError(f"zone {dup[0] or '.'!r} is in more than one server block")
    if sum(b.kubernetes is not None for b in out) > 1:
        raise CorefileError("kubernetes is configured in more than one server block")
    return Settings(tuple(out), source="corefile", **server)  # type: ignore[arg-type]


def _block(sb: ServerBlock, server: dict[str, object], read: Callable[[str], list[Upstream]]) -> BlockConfig:
    keys = [_block_key(k, sb.line) for k in sb.keys]
    zones = tuple(dict.fromkeys(z for z, _ in keys))
    ports = {p for _, p in keys}
    if len(ports) > 1:
        raise CorefileError(f"line {sb.line}: one server block on several ports")
    fields: dict[str, object] = {"zones": zones, "port": ports.pop()}
    forwards: list[ForwardConfig] = []
    seen: set[str] = set()
    for d in sb.directives:
        where = f"line {d.line}: {d.name}"
        if d.name not in PLUGINS:
            raise CorefileError(f"line {d.line}: plugin {d.name!r} is not supported by kdns "
                                f"(supported: {', '.join(PLUGINS)})")
        if d.name in ONCE and d.name in seen:
            raise CorefileError(f"{where}: only once per server block")
        seen.add(d.name)
        if d.name == "kubernetes":
            fields["kubernetes"] = _kubernetes(d, zones, where)
        elif d.name == "forward":
            forwards.append(_forward(d, where, read))
        elif d.name == "cache":
            fields["cache"] = _cache(d, where)
        elif d.name == "autopath":
            _no_block(d, where)
            if d.args != ["@kubernetes"]:
                raise CorefileError(f"{where}: kdns implements `autopath @kubernetes` only")
            fields["autopath"] = True
        elif d.name in ("errors", "log", "loop"):
            _no_block(d, where)
            if d.args:
                raise CorefileError(f"{where}: arguments are not supported by kdns ({' '.join(d.args)})")
            fields[d.name] = True
        elif d.name == "loadbalance":
            _no_block(d, where)
            # CoreDNS's only other policy, `weighted FILE`, reads weights from a file per name.
            if d.args not in ([], ["round_robin"]):
                raise CorefileError(f"{where}: kdns implements `loadbalance [round_robin]` only ({' '.join(d.args)})")
            fields["loadbalance"] = True
        elif d.name == "bind":
            _no_block(d, where)
            if not d.args:
                raise CorefileError(f"{where}: needs an address")
            fields["bind"] = tuple(d.args)
        else:
            _server_wide(d, where, server)
    if fields.get("autopath") and fields.get("kubernetes") is None:
        raise CorefileError(f"line {sb.line}: autopath @kubernetes needs the kubernetes plugin in its block")
    if fields.get("autopath") and getattr(fields["kubernetes"], "pods", "") != "verified":
        raise CorefileError(f"line {sb.line}: autopath @kubernetes needs `pods verified` "
                            "(the client must be a known pod)")
    fields["forwards"] = tuple(forwards)
    return BlockConfig(**fields)  # type: ignore[arg-type]


def _no_block(d: Directive, where: str) -> None:
    if d.has_block:
        raise CorefileError(f"{where}: takes no {{ ... }} options in kdns")


def _server_wide(d: Directive, where: str, server: dict[str, object]) -> None:
    value: object
    if d.name == "health":
        value = _address(d.args[0], where, 8080) if d.args else ":8080"
        for opt in d.block:
            if opt.name != "lameduck" or len(opt.args) != 1:
                raise CorefileError(f"line {opt.line}: health option {opt.name!r} is not supported (lameduck DURATION)")
            _set(server, "lameduck", duration(opt.args[0], where), where)
    elif d.name == "ready":
        _no_block(d, where)
        value = _address(d.args[0], where, 8181) if d.args else ":8181"
    elif d.name == "prometheus":
        _no_block(d, where)
        value = _address(d.args[0], where, 9153) if d.args else "localhost:9153"
    else:  # reload
        _no_block(d, where)
        interval = duration(d.args[0], where) if d.args else 30.0
        jitter = duration(d.args[1], where) if len(d.args) > 1 else 15.0
        if len(d.args) > 2 or interval < 2 or jitter < 1 or jitter > interval / 2:
            raise CorefileError(f"{where}: reload [INTERVAL >= 2s [JITTER >= 1s, at most INTERVAL/2]]")
        value = (interval, jitter)
    _set(server, d.name, value, where)


def _set(server: dict[str, object], key: str, value: object, where: str) -> None:
    if key in server and server[key] != value:
        raise CorefileError(f"{where}: configured differently in another server block")
    server[key] = value


def _kubernetes(d: Directive, block_zones: tuple[str, ...], where: str) -> KubernetesConfig:
    zones = [normalize(z) for z in d.args] or list(block_zones)
    forward_zones = [z for z in zones if not z.endswith(REVERSE_SUFFIXES) and z not in REVERSE_SUFFIXES]
    reverse = tuple(z for z in zones if z not in forward_zones)
    if len(forward_zones) != 1 or not forward_zones[0]:
        raise CorefileError(f"{where}: kdns serves one cluster zone (like cluster.local), plus reverse zones; "
                            f"got {' '.join(z or '.' for z in forward_zones) or 'none'}")
    kw: dict[str, object] = {"zone": forward_zones[0], "reverse_zones": reverse}
    for opt in d.block:
        w = f"line {opt.line}: kubernetes {opt.name}"
        if opt.name == "pods":
            if len(opt.args) != 1 or opt.args[0] not in ("disabled", "insecure", "verified"):
                raise CorefileError(f"{w}: disabled, insecure or verified")
            kw["pods"] = opt.args[0]
        elif opt.name == "ttl":
            kw["ttl"] = _int(opt.args[0] if len(opt.args) == 1 else "x", w, 0, 3600)
        elif opt.name == "fallthrough":
            kw["fallthrough"] = tuple(normalize(z) for z in opt.args)
        elif opt.name == "kubeconfig":
            if len(opt.args) not in (1, 2):
                raise CorefileError(f"{w}: KUBECONFIG [CONTEXT]")
            kw["kubeconfig"] = opt.args[0]
            kw["context"] = opt.args[1] if len(opt.args) == 2 else None
        elif opt.name == "startup_timeout":
            kw["startup_timeout"] = duration(opt.args[0] if opt.args else "", w)
        else:
            raise CorefileError(f"{w}: option not supported by kdns "
                                "(pods, ttl, fallthrough, kubeconfig, startup_timeout)")
    return KubernetesConfig(**kw)  # type: ignore[arg-type]


def _forward(d: Directive, where: str, read: Callable[[str], list[Upstream]]) -> ForwardConfig:
    if len(d.args) < 2:
        raise CorefileError(f"{where}: forward FROM TO...")
    to: list[Upstream] = []
    for t in d.args[1:]:
        if t.startswith("/"):
            try:
                found = read(t)
            except OSError as e:
                raise CorefileError(f"{where}: {t}: {e.strerror}") from None
            if not found:
                raise CorefileError(f"{where}: {t} has no nameserver")
            to += found
            continue
        if "://" in t and not t.startswith("dns://"):
            raise CorefileError(f"{where}: {t}: kdns forwards plain DNS only (no tls:// or https://)")
        try:
            up = Upstream.parse(t)
            _int(str(up.port), where, 1, 65535)
            if not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", up.host):
                raise ValueError
        except (ValueError, CorefileError):
            raise CorefileError(f"{where}: {t!r} is not an IP address (kdns does not resolve host names)") from None
        to.append(up)
    if len(to) > 15:
        raise CorefileError(f"{where}: at most 15 upstreams")
    kw: dict[str, object] = {"zone": normalize(d.args[0]), "to": tuple(dict.fromkeys(to))}
    for opt in d.block:
        w = f"line {opt.line}: forward {opt.name}"
        one = opt.args[0] if len(opt.args) == 1 else ""
        if opt.name == "except":
            kw["excepted"] = tuple(normalize(z) for z in opt.args)
        elif opt.name == "policy":
            if one not in POLICIES:
                raise CorefileError(f"{w}: {' | '.join(POLICIES)}")
            kw["policy"] = one
        elif opt.name == "max_concurrent":
            kw["max_concurrent"] = _int(one, w, 1)
        elif opt.name == "max_fails":
            kw["max_fails"] = _int(one, w, 0)
        elif opt.name == "health_check":
            rest = opt.args[1:]
            if rest[:1] == ["no_rec"]:
                kw["health_rd"] = False
                rest = rest[1:]
            if rest[:1] == ["domain"] and len(rest) == 2:
                kw["health_domain"] = normalize(rest[1])
                rest = []
            if not opt.args or rest:
                raise CorefileError(f"{w}: DURATION [no_rec] [domain FQDN]")
            kw["health_check"] = duration(opt.args[0], w)
        elif opt.name == "expire":
            kw["expire"] = duration(one, w)
        elif opt.name == "read_timeout":
            kw["timeout"] = duration(one, w)
        elif opt.name in ("force_tcp", "prefer_udp"):
            if opt.args:
                raise CorefileError(f"{w}: takes no arguments")
            if opt.name == "force_tcp":
                kw["force_tcp"] = True
        elif opt.name == "failover":
            codes = {name: code for code, name in RCODE_NAMES.items()}
            bad = [a for a in opt.args if a.upper() not in codes or a.upper() == "NOERROR"]
            if not opt.args or bad:
                raise CorefileError(f"{w}: RCODE... (not NOERROR; got {' '.join(bad) or 'none'})")
            kw["failover"] = frozenset(codes[a.upper()] for a in opt.args)
        else:
            raise CorefileError(f"{w}: option not supported by kdns (except, policy, max_concurrent, max_fails, "
                                "health_check, expire, read_timeout, force_tcp, prefer_udp, failover)")
    return ForwardConfig(**kw)  # type: ignore[arg-type]


def _cache(d: Directive, where: str) -> CacheConfig:
    kw: dict[str, object] = {}
    if d.args:
        if len(d.args) > 1:
            raise CorefileError(f"{where}: kdns caches the block's zones: `cache [TTL]` (no ZONES)")
        ttl = _int(d.args[0], where, 0)
        kw.update(success_ttl=ttl, denial_ttl=ttl)
    for opt in d.block:
        w = f"line {opt.line}: cache {opt.name}"
        a = opt.args
        if opt.name in ("success", "denial"):
            if not 1 <= len(a) <= 3:
                raise CorefileError(f"{w}: CAPACITY [TTL [MINTTL]]")
            kw[f"{opt.name}_capacity"] = max(1024, _int(a[0], w, 1) // 256 * 256)
            if len(a) > 1:
                kw[f"{opt.name}_ttl"] = _int(a[1], w, 0)
            if len(a) > 2:
                kw[f"{opt.name}_min_ttl"] = _int(a[2], w, 0)
        elif opt.name == "prefetch":
            if not 1 <= len(a) <= 3:
                raise CorefileError(f"{w}: AMOUNT [DURATION [PERCENTAGE%]]")
            pct = 10
            if len(a) == 3:
                if not a[2].endswith("%"):
                    raise CorefileError(f"{w}: the percentage needs its % sign")
                pct = _int(a[2][:-1], w, 10, 90)
            kw["prefetch"] = Prefetch(_int(a[0], w, 1), duration(a[1], w) if len(a) > 1 else 60.0, pct)
        elif opt.name == "serve_stale":
            if len(a) > 3 or (len(a) > 1 and a[1] not in ("immediate", "verify")):
                raise CorefileError(f"{w}: [DURATION [immediate|verify [RESPONSE_TTL]]]")
            kw["serve_stale"] = ServeStale(duration(a[0], w) if a else 3600.0, len(a) > 1 and a[1] == "verify",
                                           int(duration(a[2], w)) if len(a) > 2 else 0)
        else:
            raise CorefileError(f"{w}: option not supported by kdns (success, denial, prefetch, serve_stale)")
    return CacheConfig(**kw)  # type: ignore[arg-type]


# --- flags --------------------------------------------------------------------------------------

def from_flags(args: argparse.Namespace, upstreams: list[Upstream]) -> Settings:
    """`--listen`, `--cluster-domain`, `--upstream`, `--pods`, `--ttl`, ... as one server block
    (the behaviour kdns had before Corefiles: upstreams tried in order, the next one also on
    SERVFAIL/REFUSED, 1000 forwards at most in flight, every answer cached up to
    --max-cache-ttl). /metrics and /health stay together on --metrics-bind-address."""
    listen = [_listen(a) for a in (args.listen or ["0.0.0.0:53"])]
    ports = {p for _, p in listen}
    if len(ports) > 1:
        raise CorefileError(f"--listen on several ports ({', '.join(map(str, sorted(ports)))}): kdns serves one")
    kube = KubernetesConfig(zone=normalize(args.cluster_domain), reverse_zones=REVERSE_SUFFIXES, pods=args.pods,
                            ttl=args.ttl, negative_ttl=args.negative_ttl, fallthrough=REVERSE_SUFFIXES)
    forwards = ()
    if upstreams:
        forwards = (ForwardConfig("", tuple(upstreams), policy="sequential", max_concurrent=1000,
                                  timeout=args.forward_timeout, failover=frozenset({2, 5})),)
    cache = CacheConfig(success_capacity=10_000, success_ttl=args.max_cache_ttl, success_min_ttl=0,
                        denial_capacity=10_000, denial_ttl=args.max_cache_ttl, denial_min_ttl=0)
    block = BlockConfig(zones=("",), port=ports.pop(), bind=tuple(h for h, _ in listen), kubernetes=kube,
                        forwards=forwards, cache=cache, autopath=args.autopath)
    metrics = "0.0.0.0:9153" if args.metrics_bind_address is None else args.metrics_bind_address or None
    return Settings((block,), health=metrics, ready=metrics, prometheus=metrics)


def _listen(text: str) -> tuple[str, int]:
    up = Upstream.parse(text)
    return up.host, up.port
