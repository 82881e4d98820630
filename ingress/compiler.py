"""Ingress objects (+ Services, EndpointSlices, Secrets, IngressClasses) -> RoutingTable (pure).

Which Ingresses are ours: spec.ingressClassName (or the older kubernetes.io/ingress.class
annotation) equal to our class; an Ingress without a class when our IngressClass carries
`ingressclass.kubernetes.io/is-default-class: "true"`.

Conflicts: Ingresses are processed oldest first (creationTimestamp, then namespace/name), and
the first one to claim (host, pathType, path) keeps it; a later claim is ignored and reported in
`RoutingTable.problems` (logged by the controller). The same rule settles a host's TLS secret,
and which `defaultBackend` serves unknown hosts. Oldest-wins is what ingress-nginx does, and it is
stable: creating a new Ingress can never take a route away from one that already serves traffic.

Backends: a service port is found by number (`port.number` = the Service's `port`) or by name;
its endpoints come from `knet.kube.endpoints` (the slice ports with the service port's name, which
is how a named targetPort resolves per pod; IPv4 and IPv6), ready ones, or the serving-but-
terminating ones while no endpoint is ready (kube-proxy's graceful-termination fallback). A
backend that cannot be proxied (no such service or port, no endpoints, ExternalName, a `resource`
backend) answers 503 with a body that says which.

Changes: `compile_table` builds the whole table (an Ingress or IngressClass changed: claims and
conflicts may move). A Service, its EndpointSlices or a Secret changing does not move any route:
`retarget` re-resolves only the backends of that Service (or the certificate of that Secret) in
the servers that use it and reuses everything else; it gives the table `compile_table` would.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ingress.model import (
    BUILTIN_DEFAULT,
    EXACT,
    PREFIX,
    BackendRef,
    Route,
    RoutingTable,
    Server,
    Target,
    TlsCert,
    Upstream,
    host_matches,
    is_wildcard,
    normalize_host,
    normalize_path,
    valid_host,
    valid_path,
    wildcard_for,
)
from ingress.tls import load_secret
from knet.kube.endpoints import resolve, usable
from knet.kube.models import EndpointSlice, Ingress, IngressClass, Secret, Service
from knet.kube.models.networking import IngressBackend

SSL_REDIRECT_ANNOTATIONS = ("ingress.knet.io/ssl-redirect", "nginx.ingress.kubernetes.io/ssl-redirect")
READ_TIMEOUT_ANNOTATIONS = ("ingress.knet.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-read-timeout")
_FAR_FUTURE = datetime.datetime.max.replace(tzinfo=datetime.UTC)


@dataclass
class Options:
    ingress_class: str = "knet"
    default_backend: str | None = None  # "ns/name:port" for requests no Ingress claims
    ssl_redirect: bool = True           # TLS hosts redirect http -> https unless annotated "false"


@dataclass
class Snapshot:
    """What the compiler reads, as lookups (the daemon backs them with informer caches)."""

    ingresses: list[Ingress]
    classes: list[IngressClass]
    service: Callable[[str, str], Service | None]
    slices: Callable[[str, str], list[EndpointSlice]]
    secret: Callable[[str, str], Secret | None]

    @classmethod
    def of(cls, ingresses: Iterable[Ingress] = (), classes: Iterable[IngressClass] = (),
           services: Iterable[Service] = (), slices: Iterable[EndpointSlice] = (),
           secrets: Iterable[Secret] = ()) -> Snapshot:
        """A snapshot from plain object lists (tests, one-shot rendering)."""
        svc = {(s.namespace or "default", s.name): s for s in services}
        sec = {(s.namespace or "default", s.name): s for s in secrets}
        by_svc: dict[tuple[str, str], list[EndpointSlice]] = {}
        for sl in slices:
            by_svc.setdefault((sl.namespace or "default", sl.service_name or ""), []).append(sl)
        return cls(list(ingresses), list(classes), lambda ns, n: svc.get((ns, n)),
                   lambda ns, n: by_svc.get((ns, n), []), lambda ns, n: sec.get((ns, n)))


def is_ours(ing: Ingress, class_name: str, classes: Iterable[IngressClass]) -> bool:
    if ing.class_name:
        return ing.class_name == class_name
    return any(c.name == class_name and c.is_default for c in classes)


def age_key(ing: Ingress) -> tuple[datetime.datetime, str, str]:
    ts = ing.metadata.creation_timestamp
    if ts is not None and ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.UTC)
    return (ts or _FAR_FUTURE, ing.namespace or "default", ing.name)


def resolve_backend(snap: Snapshot, ref: BackendRef) -> tuple[Target, Upstream | None]:
    """A service backend -> what it serves: an upstream of the service port's usable endpoints,
    or a 503 that says why there is none."""
    ns, name, port = ref
    label = f"{ns}/{name}:{port}"
    svc = snap.service(ns, name)
    if svc is None:
        return Target(service=label, status=503, message=f"service {ns}/{name} not found", ref=ref), None
    if svc.spec.type == "ExternalName":
        return Target(service=label, status=503, message=f"service {ns}/{name} is an ExternalName service, "
                                                         "which knet-ingress does not proxy to", ref=ref), None
    sp = next((p for p in svc.spec.ports if p.protocol == "TCP" and
               (p.port == port if isinstance(port, int) else p.name == port)), None)
    if sp is None:
        return Target(service=label, status=503, message=f"service {ns}/{name} has no TCP port {port}", ref=ref), None
    label = f"{ns}/{name}:{sp.port}"
    servers = tuple(sorted({e.addr for e in usable(resolve(snap.slices(ns, name)).for_port(sp))}))
    if not servers:
        return Target(service=label, status=503, message=f"no ready endpoints for service {label}", ref=ref), None
    # One upstream per service port: by-name and by-number references share it.
    up = f"{ns}_{name}_{sp.port}"
    return Target(upstream=up, service=label, ref=ref), Upstream(up, label, servers)


class _Builder:
    def __init__(self, snap: Snapshot, options: Options) -> None:
        self.snap = snap
        self.options = options
        self.table = RoutingTable()
        self.claims: dict[tuple[str, str, str], Route] = {}   # (rule host, kind, path) -> route
        self.host_fallback: dict[str, Route] = {}
        self.global_fallback: Route | None = None
        self.tls: dict[str, tuple[TlsCert, bool]] = {}         # host -> (cert, redirect)
        self.secrets: dict[str, TlsCert] = {}
        self.resolved: dict[BackendRef, Target] = {}

    def problem(self, msg: str) -> None:
        self.table.problems.append(msg)

    # -- backends
    def target(self, ns: str, backend: IngressBackend) -> Target:
        if backend.service is None:
            kind = (backend.resource or {}).get("kind", "resource")
            return Target(status=503, message=f"{kind} backends are not supported by knet-ingress")
        ref = (ns, backend.service.name, backend.service.port.value)
        self.table.services.add(f"{ns}/{ref[1]}")
        if ref not in self.resolved:
            target, upstream = resolve_backend(self.snap, ref)
            if upstream is not None:
                self.table.upstreams[upstream.name] = upstream
            self.resolved[ref] = target
        return self.resolved[ref]

    def default_backend_option(self) -> Route | None:
        spec = self.options.default_backend
        if not spec:
            return None
        ref, _, port = spec.rpartition(":")
        ns, _, name = ref.rpartition("/")
        port_value: int | str = int(port) if port.isdigit() else port
        backend = IngressBackend.model_validate(
            {"service": {"name": name, "port": {"number" if isinstance(port_value, int) else "name": port_value}}})
        return Route("/", PREFIX, self.target(ns or "default", backend), "")

    # -- one Ingress
    def add(self, ing: Ingress) -> None:
        ns, key = ing.namespace or "default", f"{ing.namespace or 'default'}/{ing.name}"
        self.table.ingresses.append(key)
        hosts: list[str] = []
        timeout = self.read_timeout(ing, key)
        for rule in ing.spec.rules:
            host = normalize_host(rule.host)
            if host and not valid_host(host):
                self.problem(f"{key}: invalid host {rule.host!r} ignored")
                continue
            if host and host not in hosts:
                hosts.append(host)
            for p in rule.http.paths if rule.http else []:
                kind = EXACT if p.path_type == "Exact" else PREFIX  # ImplementationSpecific = Prefix
                path = normalize_path(p.path, kind)
                if not valid_path(path):
                    self.problem(f"{key}: path {p.path!r} ignored (quotes, backslashes, spaces, control characters)")
                    continue
                claim = (host, kind, path)
                if claim in self.claims:
                    owner = self.claims[claim].ingress
                    if owner != key:
                        self.problem(f"conflict: {key} {host or '*'} {kind} {path} ignored, already defined by "
                                     f"older Ingress {owner}")
                    continue
                self.claims[claim] = Route(path, kind, self.target(ns, p.backend), key, host, timeout)
        if ing.spec.default_backend is not None:
            fallback = Route("/", PREFIX, self.target(ns, ing.spec.default_backend), key, "", timeout)
            if self.global_fallback is None:
                self.global_fallback = fallback
            for h in hosts:
                self.host_fallback.setdefault(h, fallback)
        annotations = ing.metadata.annotations
        redirect = self.options.ssl_redirect and not any(
            annotations.get(a, "").lower() == "false" for a in SSL_REDIRECT_ANNOTATIONS)
        for entry in ing.spec.tls:
            # No hosts: the certificate is for this Ingress's own hosts.
            for h in [normalize_host(x) for x in entry.hosts] or hosts:
                if not valid_host(h):
                    self.problem(f"{key}: invalid TLS host {h!r} ignored")
                    continue
                cert = self.secret_cert(ns, entry.secret_name)
                if h in self.tls:
                    if self.tls[h][0].secret != cert.secret:
                        self.problem(f"conflict: {key} TLS for {h} ignored, already defined by an older Ingress")
                    continue
                self.tls[h] = (cert, redirect)
                self.table.tls_owners[h] = key  # a broken certificate is reported in build()

    def read_timeout(self, ing: Ingress, key: str) -> int | None:
        """Seconds to wait for a backend's answer (default: the controller's --read-timeout)."""
        for a in READ_TIMEOUT_ANNOTATIONS:
            value = ing.metadata.annotations.get(a)
            if value is None:
                continue
            if value.strip().isdigit() and 1 <= int(value) <= 3600:
                return int(value)
            self.problem(f"{key}: annotation {a}={value!r} ignored (whole seconds, 1-3600)")
        return None

    def secret_cert(self, ns: str, name: str | None) -> TlsCert:
        if not name:
            return TlsCert()  # no secretName: the default certificate
        key = f"{ns}/{name}"
        self.table.secrets.add(key)
        if key not in self.secrets:
            self.secrets[key] = load_secret(self.snap.secret(ns, name), key)
        return self.secrets[key]

    # -- servers
    def routes_for(self, host: str) -> list[Route]:
        best: dict[tuple[str, str], tuple[int, Route]] = {}
        for (rule_host, kind, path), route in self.claims.items():
            if rule_host == host:
                rank = 0
            elif not rule_host:
                rank = 2
            elif host and is_wildcard(rule_host) and not is_wildcard(host) and host_matches(rule_host, host):
                rank = 1
            else:
                continue
            if (kind, path) not in best or rank < best[(kind, path)][0]:
                best[(kind, path)] = (rank, route)
        return sorted((r for _, r in best.values()), key=lambda r: (r.path, r.kind))

    def build(self) -> RoutingTable:
        default = self.global_fallback or self.default_backend_option() or Route("/", PREFIX, BUILTIN_DEFAULT, "")
        hosts = {h for h, _, _ in self.claims if h} | set(self.tls) | set(self.host_fallback)
        servers = {"": Server("", self.routes_for(""), default)}
        for host in sorted(hosts):
            wild = wildcard_for(host) if not is_wildcard(host) else None
            fallback = self.host_fallback.get(host) or (self.host_fallback.get(wild) if wild else None) or default
            tls = self.tls.get(host) or (self.tls.get(wild) if wild else None)
            cert = tls[0] if tls else None
            servers[host] = Server(host, self.routes_for(host), fallback, cert,
                                   # cert is tls[0]: never None where tls is set
                                   ssl_redirect=bool(tls and tls[1] and not cert.error),  # type: ignore[union-attr]
                                   wants_redirect=bool(tls and tls[1]))
        t = self.table
        t.servers = servers
        used: set[str] = set()
        for host, server in servers.items():
            for route in (*server.routes, server.fallback):
                if route.target.ref is not None:
                    # service_key is None only for a target without a Service ref (excluded just above)
                    t.service_hosts.setdefault(route.target.service_key, set()).add(host)  # type: ignore[arg-type]
                if route.target.upstream:
                    used.add(route.target.upstream)
            if server.tls is not None and server.tls.secret:
                t.secret_hosts.setdefault(server.tls.secret, set()).add(host)
        # An Ingress's defaultBackend that serves nowhere (an older one's serves) gets no upstream.
        t.upstreams = {name: up for name, up in t.upstreams.items() if name in used}
        t.config_problems = list(t.problems)
        t.problems = t.config_problems + _certificate_problems(t)
        return t


def _certificate_problems(table: RoutingTable) -> list[str]:
    out = []
    for host, owner in table.tls_owners.items():
        cert = table.servers[host].tls
        if cert is not None and cert.error:
            out.append(f"{owner}: TLS for {host}: {cert.error}")
    return out


def compile_table(snap: Snapshot, options: Options | None = None) -> RoutingTable:
    options = options or Options()
    b = _Builder(snap, options)
    for ing in sorted((i for i in snap.ingresses if is_ours(i, options.ingress_class, snap.classes)), key=age_key):
        b.add(ing)
    return b.build()


def retarget(table: RoutingTable, snap: Snapshot, services: Iterable[str] = (),
             secrets: Iterable[str] = ()) -> RoutingTable:
    """`table` with the backends of `services` ("ns/name": the Service or its EndpointSlices
    changed) resolved again and the certificates of `secrets` reloaded. Only the servers that use
    them are touched; every other server, route and upstream is reused. The result equals
    `compile_table` of the same snapshot provided no Ingress or IngressClass changed since
    `table` was compiled."""
    out = replace(table, servers=dict(table.servers), upstreams=dict(table.upstreams))
    for key in set(services):
        _retarget_service(out, snap, key)
    certs = set(secrets) & table.secret_hosts.keys()
    for key in certs:
        ns, _, name = key.partition("/")
        cert = load_secret(snap.secret(ns, name), key)
        for host in table.secret_hosts[key]:
            server = out.servers[host]
            out.servers[host] = replace(server, tls=cert, ssl_redirect=server.wants_redirect and not cert.error)
    if certs:
        out.problems = out.config_problems + _certificate_problems(out)
    return out


def _retarget_service(out: RoutingTable, snap: Snapshot, key: str) -> None:
    resolved: dict[BackendRef, tuple[Target, Upstream | None]] = {}
    stale: set[str] = set()

    def again(route: Route) -> Route:
        t = route.target
        if t.ref is None or t.service_key != key:
            return route
        if t.upstream:
            stale.add(t.upstream)
        if t.ref not in resolved:
            resolved[t.ref] = resolve_backend(snap, t.ref)
        return replace(route, target=resolved[t.ref][0])

    for host in out.service_hosts.get(key, ()):
        server = out.servers[host]
        out.servers[host] = replace(server, routes=[again(r) for r in server.routes], fallback=again(server.fallback))
    for name in stale:
        out.upstreams.pop(name, None)
    out.upstreams.update((up.name, up) for _, up in resolved.values() if up is not None)


# Ingress informer indexes: which Ingresses a Service's or a Secret's change concerns.
BACKEND_SERVICES, TLS_SECRETS = "backend-services", "tls-secrets"


def backend_services(ing: Ingress) -> list[str]:
    """ "ns/name" of every Service an Ingress routes to (rules and defaultBackend)."""
    ns = ing.namespace or "default"
    backends = [p.backend for r in ing.spec.rules if r.http for p in r.http.paths]
    if ing.spec.default_backend is not None:
        backends.append(ing.spec.default_backend)
    return [f"{ns}/{b.service.name}" for b in backends if b.service is not None]


def tls_secrets(ing: Ingress) -> list[str]:
    ns = ing.namespace or "default"
    return [f"{ns}/{t.secret_name}" for t in ing.spec.tls if t.secret_name]
