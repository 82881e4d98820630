"""A Service and its endpoints -> the proxy's ServicePorts (pure).

The endpoints come from `knet.kube.endpoints.resolve` (the one reading of EndpointSlices every
component shares: a service port's endpoints by port name and protocol, duplicates across slices
once, conditions as the API defines them); this module adds only what is kproxy's, as kube-proxy
reads a Service: ExternalName and headless services are not proxied; one family at a time, as
kube-proxy's per-family proxiers read it (the family's clusterIPs, externalIPs and LoadBalancer
IPs, with that family's EndpointSlices: a Service with both families gives both proxiers ports, a
single-stack one only its family's); node ports exist for NodePort and LoadBalancer services
(served on the node's addresses of each family the Service has); LoadBalancer addresses come from
status; SCTP and unknown protocols are skipped.

    eps = resolve(slices.by_index(SERVICE, svc.key), family=6)
    ports = service_ports(svc, eps, family=6)
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import replace

from knet.kube.endpoints import ServiceEndpoints
from knet.kube.models import Service
from kproxy.model import DEFAULT_AFFINITY_SECONDS, Endpoint, ServicePort

PROTOCOLS = ("TCP", "UDP", "SCTP")
FAMILY = 4  # the default family (the one kproxy served alone before dual-stack)
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def addresses(values: Iterable[str | None], family: int = FAMILY) -> tuple[str, ...]:
    """The `family` addresses among `values`, in the form the kernel prints them (inet_pton: a
    tenth of ipaddress's cost, per Service)."""
    af = _AF[family]
    out = []
    for v in values:
        if not v or (":" in v) != (family == 6):
            continue
        try:
            raw = socket.inet_pton(af, v)
        except OSError:
            continue
        out.append(v if family == 4 else socket.inet_ntop(af, raw))  # "fd00:0::1" -> "fd00::1"
    return tuple(dict.fromkeys(out))


def _canonical6(ip: str) -> str | None:
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip))
    except OSError:
        return None


def service_ports(svc: Service, endpoints: ServiceEndpoints, family: int = FAMILY) -> list[ServicePort]:
    """One ServicePort per port of `svc` for the `family` proxier, with `endpoints` (its resolved
    slices of that family) per port; none when the Service has no clusterIP of the family."""
    spec = svc.spec
    if spec.type == "ExternalName":
        return []
    cluster_ips = addresses([*spec.cluster_ips, spec.cluster_ip], family)
    if not cluster_ips:
        return []  # headless (clusterIP: None) or not yet allocated: nothing to proxy
    affinity = None
    if spec.session_affinity == "ClientIP":
        cfg = spec.session_affinity_config
        affinity = (cfg.client_ip.timeout_seconds if cfg and cfg.client_ip else DEFAULT_AFFINITY_SECONDS)
    lb_ips = addresses((i.ip for i in svc.status.load_balancer.ingress), family) \
        if spec.type == "LoadBalancer" else ()
    node_ports = spec.type in ("NodePort", "LoadBalancer")
    external_ips = addresses(spec.external_ips, family)
    out = []
    for port in spec.ports:
        if port.protocol not in PROTOCOLS:
            continue
        found = endpoints.for_port(port)
        if family == 6:  # in the kernel's form (rules and maps are compared with what it prints)
            found = tuple(e for e in found if _canonical6(e.address) == e.address) + tuple(
                replace(e, address=a) for e in found if (a := _canonical6(e.address)) and a != e.address)
        eps = tuple(Endpoint(ip=e.address, port=e.port or 0, ready=e.ready, serving=e.serving,
                             terminating=e.terminating, node_name=e.node_name)
                    for e in found if e.port)
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
            family=family,
        ))
    return out


def health_check_node_port(svc: Service) -> int | None:
    """The port a cloud load balancer probes for this node's local endpoints (kube-proxy serves
    it for LoadBalancer services with externalTrafficPolicy Local), or None."""
    spec = svc.spec
    if spec.type == "LoadBalancer" and spec.external_traffic_policy == "Local" and spec.health_check_node_port:
        return int(spec.health_check_node_port)
    return None
