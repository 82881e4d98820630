"""The routing table (pure data) and the reference semantics of host and path matching.

`RoutingTable.lookup(host, path)` is the executable definition of what the generated nginx
configuration must do; the unit tests check it against the Ingress spec's examples and the
integration tests check nginx against it.

Semantics (see ingress/README.md for the reasoning):
  * hosts: a precise host matches itself (case-insensitively); `*.example.com` matches exactly one
    extra leading label (`a.example.com`, not `example.com`, not `a.b.example.com`). A rule
    without a host matches every host.
  * a request is served by the table of its host: the union of the rules whose host matches it
    (precise, wildcard, host-less). Within it, an Exact path that equals the request path wins;
    otherwise the longest element-wise Prefix; on the same path and type the more specific host
    wins (precise > wildcard > none). Nothing matches -> the host's default backend.
  * Prefix is element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`;
    trailing slashes of the rule path are ignored (`/foo/` == `/foo`). ImplementationSpecific is
    treated as Prefix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

EXACT, PREFIX = "Exact", "Prefix"
# A service backend as an Ingress writes it: (namespace, service name, port number or name).
BackendRef = tuple[str, str, int | str]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_SLASHES = re.compile(r"/{2,}")


def normalize_host(host: str | None) -> str:
    return (host or "").strip().lower().rstrip(".")


def valid_host(host: str) -> bool:
    """A precise DNS name or `*.` + one; "" (no host) is handled by the caller."""
    return len(host) <= 253 and bool(_HOST_RE.match(host)) and host != "*"


def is_wildcard(host: str) -> bool:
    return host.startswith("*.")


def host_matches(rule_host: str, host: str) -> bool:
    """Does a rule's host (normalized; "" = any) match a request's host (normalized)?"""
    if not rule_host:
        return True
    if is_wildcard(rule_host):
        first, sep, rest = host.partition(".")
        return bool(first) and bool(sep) and rest == rule_host[2:]
    return rule_host == host


def wildcard_for(host: str) -> str | None:
    """The one wildcard host that can match a precise host (one label replaced by `*`)."""
    _, sep, rest = host.partition(".")
    return f"*.{rest}" if sep and rest else None


def normalize_path(path: str | None, kind: str) -> str:
    """A rule path as matched: repeated slashes collapsed (nginx merges them in request URIs, so a
    rule with `//` could never match otherwise) and, for Prefix, trailing slashes dropped."""
    p = _SLASHES.sub("/", path or "/")
    if kind == PREFIX and len(p) > 1:
        p = p.rstrip("/") or "/"
    return p


def valid_path(path: str) -> bool:
    """Paths are written into nginx.conf inside double quotes: no quote, backslash, whitespace or
    control characters (the API server's own validation allows more for ImplementationSpecific)."""
    return path.startswith("/") and not any(c in '"\\' or ord(c) <= 0x20 or ord(c) == 0x7F for c in path)


def prefix_matches(prefix: str, path: str) -> bool:
    """Element-wise prefix match of a normalized Prefix rule path against a request path."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class Target:
    """Where a route sends requests: an upstream (ready endpoints of a service port), or a fixed
    answer (status + message) when there is nothing to proxy to."""

    upstream: str | None = None
    service: str = ""  # "ns/name:port" (logs, metrics, error bodies)
    status: int = 0
    message: str = ""
    # The backend this target resolves (None: a resource backend or a built-in answer); what a
    # change of that Service or its EndpointSlices re-resolves. Not part of what is served.
    ref: BackendRef | None = field(default=None, compare=False)

    @property
    def proxied(self) -> bool:
        return self.upstream is not None

    @property
    def service_key(self) -> str | None:
        return f"{self.ref[0]}/{self.ref[1]}" if self.ref else None


BUILTIN_DEFAULT = Target(service="", status=404, message="default backend - 404")


@dataclass(frozen=True)
class Upstream:
    name: str
    service: str            # "ns/name:port"
    servers: tuple[str, ...]  # "ip:port" / "[ip6]:port", sorted


@dataclass(frozen=True)
class Route:
    path: str
    kind: str               # EXACT or PREFIX
    target: Target
    ingress: str            # "ns/name" that owns the route ("" for built-ins)
    host: str = ""          # the rule host it came from ("" = host-less)
    read_timeout: int | None = None  # seconds, from the Ingress's proxy-read-timeout annotation

    def matches(self, path: str) -> bool:
        return path == self.path if self.kind == EXACT else prefix_matches(self.path, path)


@dataclass(frozen=True)
class TlsCert:
    """A host's certificate: `pem` (chain + key) from a Secret, or the controller's default
    certificate (`secret` == ""), or an error that makes the host answer 503."""

    secret: str = ""        # "ns/name"
    pem: bytes = b""
    error: str | None = None

    @property
    def file_name(self) -> str | None:
        if self.error or not self.secret:
            return None
        ns, _, name = self.secret.partition("/")
        # The content hash in the name: a rotated secret gets a new file, so the config text
        # changes and nginx reloads it; a stale file is never half-overwritten under nginx.
        return f"{ns}_{name}_{hashlib.sha256(self.pem).hexdigest()[:16]}.pem"


@dataclass
class Server:
    host: str                              # "" = the default server (unknown hosts)
    routes: list[Route] = field(default_factory=list)
    fallback: Route = field(default_factory=lambda: Route("/", PREFIX, BUILTIN_DEFAULT, ""))
    tls: TlsCert | None = None
    ssl_redirect: bool = False
    wants_redirect: bool = False  # the Ingress asks for http -> https (served only with a usable cert)

    def lookup(self, path: str) -> Route:
        exact = [r for r in self.routes if r.kind == EXACT and r.path == path]
        if exact:
            return exact[0]
        prefixes = [r for r in self.routes if r.kind == PREFIX and prefix_matches(r.path, path)]
        if prefixes:
            return max(prefixes, key=lambda r: len(r.path))
        return self.fallback


@dataclass
class RoutingTable:
    servers: dict[str, Server] = field(default_factory=dict)  # by host; "" = default server
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    ingresses: list[str] = field(default_factory=list)         # "ns/name" of every Ingress served
    problems: list[str] = field(default_factory=list)          # conflicts, invalid rules, bad secrets
    services: set[str] = field(default_factory=set)            # "ns/name" referenced (change filter)
    secrets: set[str] = field(default_factory=set)             # "ns/name" referenced (change filter)
    # For re-resolving one Service's backends or one Secret's certificate without a recompile:
    service_hosts: dict[str, set[str]] = field(default_factory=dict)  # service -> hosts of servers using it
    secret_hosts: dict[str, set[str]] = field(default_factory=dict)   # secret -> hosts of servers using it
    tls_owners: dict[str, str] = field(default_factory=dict)  # TLS host -> the Ingress that set it
    config_problems: list[str] = field(default_factory=list)  # problems[] without the certificate errors

    def server_for(self, host: str) -> Server:
        host = normalize_host(host.rsplit(":", 1)[0] if not host.startswith("[") else host)
        if host in self.servers and host:
            return self.servers[host]
        wild = wildcard_for(host)
        if wild and wild in self.servers:
            return self.servers[wild]
        return self.servers[""]

    def lookup(self, host: str, path: str) -> Route:
        return self.server_for(host).lookup(path)
