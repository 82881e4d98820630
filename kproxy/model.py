"""The proxy's own view of services: one `ServicePort` per (service, port), with its endpoints,
and the decisions every data path shares.

Every data path compiles from this model, and `categorize` decides once, for all of them, what
kube-proxy's CategorizeEndpoints decides: which endpoints take cluster-wide and node-local
traffic, which traffic (internal: ClusterIP; external: node ports, external and LB IPs) has no
usable endpoint and is rejected or dropped, and where masquerading applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from knet.kube.endpoints import usable

DEFAULT_AFFINITY_SECONDS = 10800
MASQ_MARK = "0x4000"  # kube-proxy's masquerade mark, shared with flannel's "RETURN marked" rule

# What a data path does with a packet for a service port that has no usable endpoint for it.
REJECT = "reject"  # no endpoints at all: the client gets a TCP reset / ICMP error at once
DROP = "drop"  # a Local traffic policy without local endpoints (others have some): silently dropped


FAMILIES = (4, 6)
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}  # kube-proxy's ip_family label values and the API's addressType


@dataclass(frozen=True)
class Config:
    """One family's proxier settings: a backend programs `family`'s tables only (kube-proxy's
    per-family proxiers), so `cluster_cidr` is that family's pod network."""
    node_name: str
    cluster_cidr: str | None = None  # pod network: off-cluster traffic to a ClusterIP is masqueraded
    masquerade_all: bool = False
    family: int = 4  # 4 or 6

    @property
    def v6(self) -> bool:
        return self.family == 6


@dataclass
class SyncResult:
    """What one sync did (logged and turned into metrics by the daemon)."""
    full: bool
    services_written: int  # service ports whose data-path state was (re)written
    rules: int  # rules / map entries / elements written
    seconds: float
    tables: dict[str, int] = field(default_factory=dict)  # iptables: rules owned per table (after the sync)
    written: dict[str, int] = field(default_factory=dict)  # iptables: rules written per table by this sync


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None

    @property
    def addr(self) -> str:
        """ip:port as kube-proxy writes an endpoint ("[ip]:port" for IPv6, as JoinHostPort)."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    cluster_ips: tuple[str, ...] = ()
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    affinity_seconds: int | None = None  # None: no ClientIP affinity
    external_local: bool = False  # externalTrafficPolicy: Local
    internal_local: bool = False  # internalTrafficPolicy: Local
    endpoints: tuple[Endpoint, ...] = field(default=())
    family: int = 4  # the family of every address above (one proxier per family)

    @property
    def key(self) -> str:
        """kube-proxy's ServicePortName string: "ns/name:port" (":port" only for named ports)."""
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def external_dsts(self) -> list[tuple[str, str]]:
        """(address, kind) of the external and LoadBalancer addresses, in rendering order."""
        return [(ip, "external IP") for ip in self.external_ips] + \
               [(ip, "loadbalancer IP") for ip in self.load_balancer_ips]


R = TypeVar("R")


def advance(ports: dict[str, ServicePort], rendered: dict[str, R], desired: Mapping[str, ServicePort],
            changed: Iterable[str], render: Callable[[ServicePort], R]) -> tuple[dict[str, ServicePort], dict[str, R]]:
    """A backend's partial sync: copies of its last ports and renderings with the `changed` keys
    taken from `desired` (re-rendered) or dropped. Copies, so a failed write leaves the originals."""
    new_ports, new_rendered = dict(ports), dict(rendered)
    for k in changed:
        sp = desired.get(k)
        if sp is not None:
            new_ports[k] = sp
            new_rendered[k] = render(sp)
        else:
            new_ports.pop(k, None)
            new_rendered.pop(k, None)
    return new_ports, new_rendered


def recount(count: int, old: Mapping[str, R], new: Mapping[str, R], changed: Iterable[str],
            size: Callable[[R], int], full: bool = False) -> int:
    """A total kept over a backend's renderings: summed anew after a full sync, else moved by the
    `changed` keys' difference only."""
    if full:
        return sum(size(r) for r in new.values())
    return count + sum(size(new[k]) for k in changed if k in new) - sum(size(old[k]) for k in changed if k in old)


@dataclass(frozen=True)
class Categories:
    """One service port's endpoints as this node's data path uses them."""
    cluster: tuple[Endpoint, ...]  # usable endpoints anywhere (Cluster policy)
    local: tuple[Endpoint, ...]  # usable endpoints on this node (Local policy)
    internal: tuple[Endpoint, ...]  # what ClusterIP traffic goes to (internalTrafficPolicy)
    external: tuple[Endpoint, ...]  # what outside traffic to external destinations goes to
    internal_verdict: str | None  # REJECT / DROP when ClusterIP traffic has no endpoint, else None
    external_verdict: str | None  # the same for external destinations (node ports, external/LB IPs)
    uses_cluster: bool  # the cluster-wide endpoint set is in use (internal Cluster policy, or
    #                     external destinations: pods and the node reach those cluster-wide)
    uses_local: bool  # the local endpoint set is in use (a Local policy)

    @property
    def has_endpoints(self) -> bool:
        return bool(self.cluster)

    @property
    def reachable(self) -> tuple[Endpoint, ...]:
        """Every endpoint this node may send traffic to (the ones needing per-endpoint state)."""
        eps = (self.cluster if self.uses_cluster else ()) + (self.local if self.uses_local else ())
        return tuple(dict.fromkeys(eps))


def categorize(sp: ServicePort, node_name: str) -> Categories:
    """kube-proxy's CategorizeEndpoints plus its no-endpoint verdicts: a service without any usable
    endpoint rejects; a Local policy whose node has none drops that traffic only (the other kind
    may still have endpoints)."""
    cluster = cluster_endpoints(sp)
    local = usable(e for e in sp.endpoints if e.node_name == node_name)
    internal = local if sp.internal_local else cluster
    external = local if sp.external_local else cluster
    internal_verdict: str | None
    external_verdict: str | None
    if not cluster:
        internal_verdict = external_verdict = REJECT
    else:
        internal_verdict = None if internal else DROP
        external_verdict = None if external else DROP
    return Categories(
        cluster=cluster, local=local, internal=internal, external=external,
        internal_verdict=internal_verdict, external_verdict=external_verdict,
        uses_cluster=(not sp.internal_local) or sp.externally_accessible,
        uses_local=sp.internal_local or (sp.externally_accessible and sp.external_local),
    )


def masquerade_external(sp: ServicePort) -> bool:
    """Outside traffic to an external destination is masqueraded under the Cluster policy (the
    endpoint may be on another node, whose reply must come back through this one); under Local the
    client address is kept (only the node's own traffic is masqueraded there)."""
    return not sp.external_local


def cluster_endpoints(sp: ServicePort) -> tuple[Endpoint, ...]:
    """Every endpoint that may take new connections, on any node (what stale-flow cleanup compares):
    the ready ones, else the serving terminating ones (kube-proxy's fallback, so a rolling restart
    of every pod does not black-hole)."""
    return usable(sp.endpoints)
