"""Kubernetes Services + EndpointSlices -> the proxy's ServicePorts (pure).

Follows kube-proxy's reading of the API: ExternalName and headless services are not proxied;
endpoints come from the slices labelled with the service's name, matched to a service port by
port name and protocol (that is how a named targetPort resolves per pod); node ports exist for
NodePort and LoadBalancer services; LoadBalancer addresses come from status.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from knet.kube.models import EndpointSlice, Service
from kproxy.model import DEFAULT_AFFINITY_SECONDS, Endpoint, ServicePort

PROTOCOLS = ("TCP", "UDP", "SCTP")


def _ipv4(values: Iterable[str | None]) -> tuple[str, ...]:
    out = []
    for v in values:
        if not v or v == "None":
            continue
        try:
            if ipaddress.ip_address(v).version == 4:
                out.append(str(v))
        except ValueError:
            continue
    return tuple(dict.fromkeys(out))


def service_ports(svc: Service, slices: Iterable[EndpointSlice]) -> list[ServicePort]:
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
    slices = [s for s in slices if s.address_type == "IPv4"]
    out = []
    for port in spec.ports:
        if port.protocol not in PROTOCOLS:
            continue
        endpoints: list[Endpoint] = []
        seen: set[str] = set()
        for sl in slices:
            for sp in sl.ports:
                if (sp.name or "") != (port.name or "") or sp.protocol != port.protocol or sp.port is None:
                    continue
                for ep in sl.endpoints:
                    c = ep.conditions
                    for addr in ep.addresses:
                        key = f"{addr}:{sp.port}"
                        if key in seen:
                            continue  # the same endpoint may appear in two slices during a move
                        seen.add(key)
                        endpoints.append(Endpoint(ip=addr, port=int(sp.port), ready=c.is_ready,
                                                  serving=c.is_serving, terminating=c.is_terminating,
                                                  node_name=ep.node_name))
        endpoints.sort(key=lambda e: (e.ip, e.port))
        out.append(ServicePort(
            namespace=svc.metadata.namespace or "default",
            name=svc.metadata.name,
            port_name=port.name or "",
            protocol=port.protocol,
            port=int(port.port),
            cluster_ips=cluster_ips,
            node_port=port.node_port if spec.type in ("NodePort", "LoadBalancer") and port.node_port else None,
            external_ips=_ipv4(spec.external_ips),
            load_balancer_ips=lb_ips,
            affinity_seconds=affinity,
            external_local=spec.external_traffic_policy == "Local",
            internal_local=spec.internal_traffic_policy == "Local",
            endpoints=tuple(endpoints),
        ))
    return out
