"""A Service's EndpointSlices -> its endpoints, per port: the one reading of EndpointSlices that
kproxy, kdns and ingress share (kube-proxy's EndpointSliceCache idea).

    from knet.kube.indexes import SERVICE
    eps = resolve(slices.by_index(SERVICE, svc.key), family=4)
    for port in svc.spec.ports:
        backends = eps.for_port(port)                  # (ServiceEndpoint, ...) with .port set
    usable(backends)                                   # ready, else serving-and-terminating
    dns = resolve(slices.by_index(SERVICE, svc.key)).published(publishes_not_ready(svc))

Meaning (discovery.k8s.io/v1, as kube-proxy and CoreDNS read it):
- A service port's endpoints come from the slice ports with the same name and protocol, each with
  that slice port's number: that is how a named targetPort resolves per pod (the EndpointSlice
  controller groups pods whose named port has the same number into one slice). A slice port
  without a number is skipped; a missing name is the unnamed port "".
- Conditions as the API defines them: ready/serving unset mean true, serving unset follows ready,
  terminating unset means false.
- The same endpoint in two slices (an endpoint moving between slices) is one endpoint: per port
  the same (address, port), at the address level the same address. Of the copies the most
  available one counts (ready over not ready, then serving), else the first by slice name, so the
  answer does not depend on the order the slices arrived in.
- IPv4 and IPv6 slices are kept apart: `family=4` or `6` reads only that family's slices (a
  proxy programs one family per table), None reads both (DNS answers A and AAAA; an ingress proxies
  to either). FQDN slices are never read (deprecated; nothing here can use them).
- Every address of an endpoint counts (the API calls them fungible; the EndpointSlice controller
  writes one), as kube-dns/CoreDNS publish them.
- publishNotReadyAddresses (or the older tolerate-unready annotation) means "publish in DNS
  whether ready or not": `published()` applies it. For proxying it means nothing extra: the
  EndpointSlice controller already marks such endpoints ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from knet.kube.models import EndpointSlice, Service, ServicePort

TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"
FAMILIES = {"IPv4": 4, "IPv6": 6}
PortKey = tuple[str, str]  # (port name, protocol)


@dataclass(frozen=True)
class ServiceEndpoint:
    address: str
    family: int  # 4 or 6
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    port: int | None = None  # set in per-port answers; None at the address level
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    pod: str | None = None  # "namespace/name" of the target Pod

    @property
    def addr(self) -> str:
        """address:port as a client dials it ("[v6]:port" for IPv6)."""
        host = f"[{self.address}]" if self.family == 6 else self.address
        return host if self.port is None else f"{host}:{self.port}"


def _rank(ep: ServiceEndpoint) -> tuple[bool, bool]:
    return ep.ready, ep.serving


@dataclass(frozen=True)
class ServiceEndpoints:
    """A Service's endpoints: per (port name, protocol) of its slices, and each address once."""

    ports: Mapping[PortKey, tuple[ServiceEndpoint, ...]] = field(default_factory=dict)
    endpoints: tuple[ServiceEndpoint, ...] = ()  # every address once, port None (slices without ports too)

    def for_port(self, port: ServicePort | PortKey) -> tuple[ServiceEndpoint, ...]:
        """The endpoints of a service port (matched by name and protocol), sorted by address."""
        key = (port.name or "", port.protocol) if isinstance(port, ServicePort) else port
        return self.ports.get(key, ())

    def published(self, not_ready_too: bool) -> ServiceEndpoints:
        """What DNS publishes: ready endpoints, or all of them for publishNotReadyAddresses."""
        if not_ready_too:
            return self
        return ServiceEndpoints({k: tuple(e for e in eps if e.ready) for k, eps in self.ports.items()},
                                tuple(e for e in self.endpoints if e.ready))


def resolve(slices: Iterable[EndpointSlice], family: int | None = None) -> ServiceEndpoints:
    """The endpoints of one Service's slices (the caller looks them up by the Service, e.g. with
    the informer's SERVICE index). `family`: 4, 6, or None for both."""
    if family not in (None, 4, 6):
        raise ValueError(f"address family {family!r}: 4, 6 or None")
    by_port: dict[PortKey, dict[tuple[str, int], ServiceEndpoint]] = {}
    by_address: dict[str, ServiceEndpoint] = {}
    for sl in sorted(slices, key=lambda s: s.metadata.name):
        fam = FAMILIES.get(sl.address_type)
        if fam is None or (family is not None and fam != family):
            continue
        ns = sl.metadata.namespace
        found = []
        for ep in sl.endpoints:
            c = ep.conditions
            ref = ep.target_ref
            pod = f"{ref.namespace or ns}/{ref.name}" if ref is not None and ref.kind == "Pod" and ref.name else None
            for address in ep.addresses:
                found.append(ServiceEndpoint(address, fam, c.is_ready, c.is_serving, c.is_terminating, None,
                                             ep.hostname, ep.node_name, ep.zone, pod))
        for e in found:
            _keep(by_address, e.address, e)
        for sp in sl.ports:
            if sp.port is None:
                continue
            into = by_port.setdefault((sp.name or "", sp.protocol), {})
            port = sp.port
            for e in found:  # the constructor, not dataclasses.replace: 4x cheaper, and this runs per endpoint
                _keep(into, (e.address, port), ServiceEndpoint(e.address, e.family, e.ready, e.serving, e.terminating,
                                                               port, e.hostname, e.node_name, e.zone, e.pod))
    return ServiceEndpoints({k: tuple(sorted(v.values(), key=_order)) for k, v in by_port.items()},
                            tuple(sorted(by_address.values(), key=_order)))


def _keep(into: dict, key: object, ep: ServiceEndpoint) -> None:
    have = into.get(key)
    if have is None or _rank(ep) > _rank(have):
        into[key] = ep


def _order(ep: ServiceEndpoint) -> tuple[str, int]:
    return ep.address, ep.port or 0


class Conditions(Protocol):
    """What `usable` reads: an endpoint's conditions (a component's own endpoint type may have them)."""
    @property
    def ready(self) -> bool: ...
    @property
    def serving(self) -> bool: ...
    @property
    def terminating(self) -> bool: ...


E = TypeVar("E", bound=Conditions)


def usable(endpoints: Iterable[E]) -> tuple[E, ...]:
    """The endpoints to send new traffic to: the ready ones, or while none is ready the serving
    ones that are terminating (kube-proxy's graceful-termination fallback)."""
    eps = tuple(endpoints)
    ready = tuple(e for e in eps if e.ready)
    return ready or tuple(e for e in eps if e.serving and e.terminating)


def publishes_not_ready(svc: Service) -> bool:
    """spec.publishNotReadyAddresses, or the annotation that preceded it."""
    return svc.spec.publish_not_ready_addresses or \
        svc.metadata.annotations.get(TOLERATE_UNREADY, "").lower() == "true"
