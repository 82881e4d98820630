"""A Service and its endpoints -> the proxy's ServicePorts (pure).

The endpoints come from `knet.kube.endpoints.resolve` (the one reading of EndpointSlices every
component shares: a service port's endpoints by port name and protocol, duplicates across slices
once, conditions as the API defines them); this module adds only what is kproxy's, as kube-proxy
reads a Service: ExternalName and headless services are not proxied; IPv4 only (one table per
family, and kproxy programs the IPv4 one); node ports exist for NodePort and LoadBalancer
services; LoadBalancer addresses come from status; SCTP and unknown protocols are skipped.

    eps = resolve(slices.by_index(SERVICE, svc.key), family=4)
    ports = service_ports(svc, eps)
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from knet.kube.endpoints import ServiceEndpoints
from knet.kube.models import Service
from kproxy.model import DEFAULT_AFFINITY_SECONDS, Endpoint, ServicePort

PROTOCOLS = ("TCP", "UDP", "SCTP")
FAMILY = 4


def _ipv4(values: Iterable[str | None]) -> tuple[str, ...]:
    """The IPv4 addresses among `values` (inet_pton: a tenth of ipaddress's cost, per Service)."""
    out = []
    for v in values:
        if not v or ":" in v:
            continue
        try:
            socket.inet_pton(socket.AF_INET, v)
        except OSError:
            continue
        out.append(v)
    return tuple(dict.fromkeys(out))


def service_ports(svc: Service, endpoints: ServiceEndpoints) -> list[ServicePort]:
    """One ServicePort per port of `svc`, with `endpoints` (its resolved IPv4 slices) per port."""
    spec = svc.spec
    if spec.type == "ExternalName":
        return []
    cluster_ips = _ipv4([*spec.cluster_ips, spec.cluster_ip])
    if not cluster_ips:
        return []  # headless (clusterIP: None) or not yet allocated: nothing to proxy
    affinity = None
    if spec.session_affinity == "ClientIP":
        cfg = spec.session_affinity_config
        affinity = (cfg.client_ip.timeout_seconds if cfg and cfg.client_ip else DEFAULT_AFFINITY_SECONDS)
    lb_ips = _ipv4(i.ip for i in svc.status.load_balancer.ingress) if spec.type == "LoadBalancer" else ()
    node_ports = spec.type in ("NodePort", "LoadBalancer")
    external_ips = _ipv4(spec.external_ips)
    out = []
    for port in spec.ports:
        if port.protocol not in PROTOCOLS:
            continue
        eps = tuple(Endpoint(ip=e.address, port=e.port or 0, ready=e.ready, serving=e.serving,
                             terminating=e.terminating, node_name=e.node_name)
                    for e in endpoints.for_port(port) if e.port)
        out.append(ServicePort(
            namespace=svc.metadata.namespace or "default",
            name=svc.metadata.name,
            port_name=port.name or "",
            protocol=port.protocol,
            port=int(port.port),
            cluster_ips=cluster_ips,
            node_port=port.node_port if node_ports and port.node_port else None,
            external_ips=external_ips,
            load_balancer_ips=lb_ips,
            affinity_seconds=affinity,
            external_local=spec.external_traffic_policy == "Local",
            internal_local=spec.internal_traffic_policy == "Local",
            endpoints=eps,
        ))
    return out


def health_check_node_port(svc: Service) -> int | None:
    """The port a cloud load balancer probes for this node's local endpoints (kube-proxy serves
    it for LoadBalancer services with externalTrafficPolicy Local), or None."""
    spec = svc.spec
    if spec.type == "LoadBalancer" and spec.external_traffic_policy == "Local" and spec.health_check_node_port:
        return int(spec.health_check_node_port)
    return None
