"""The proxy's own view of services: one `ServicePort` per (service, port), with its endpoints.

Every data path compiles from this model, so the three modes agree on what a service means
(which endpoints may take new connections, which are local, where masquerading applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_AFFINITY_SECONDS = 10800


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
        return f"{self.ip}:{self.port}"


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


def usable(endpoints: tuple[Endpoint, ...] | list[Endpoint]) -> list[Endpoint]:
    """Endpoints for new connections: the ready ones; if none is ready, the serving terminating
    ones (kube-proxy's fallback, so a rolling restart of every pod does not black-hole)."""
    ready = [e for e in endpoints if e.ready]
    if ready:
        return ready
    return [e for e in endpoints if e.serving and e.terminating]


def cluster_endpoints(sp: ServicePort) -> list[Endpoint]:
    return usable(sp.endpoints)


def local_endpoints(sp: ServicePort, node_name: str) -> list[Endpoint]:
    return usable([e for e in sp.endpoints if e.node_name == node_name])
