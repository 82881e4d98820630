"""Admission: defaults, then validation, per kind — synchronous with the request, before anything
is written (a rejected request writes nothing). Pure: objects in, causes out; the registry turns
causes into a 422 Invalid Status and does the etcd side of ClusterIP/nodePort allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knet.kube import selectors
from lab.apiserver import admission_other as other
from lab.apiserver import admission_pods as pods
from lab.apiserver import admission_services as services
from lab.apiserver.allocator import DEFAULT_SERVICE_CIDR, NodePortRange, ServiceCIDR
from lab.apiserver.resources import ResourceType
from lab.apiserver.validation import Causes, get

WORKLOADS = ("Deployment", "ReplicaSet", "ReplicationController", "StatefulSet")


@dataclass(frozen=True)
class Config:
    service_cidr: ServiceCIDR = field(default_factory=lambda: ServiceCIDR.parse(DEFAULT_SERVICE_CIDR))
    node_ports: NodePortRange = field(default_factory=NodePortRange)


def default(rt: ResourceType, obj: dict, old: dict | None = None) -> None:
    kind = rt.kind
    if kind == "Pod":
        pods.default_pod(obj)
    elif kind in WORKLOADS:
        pods.default_workload(obj, kind)
    elif kind == "Service":
        services.default_service(obj, old)
    elif kind == "Endpoints":
        services.default_endpoints(obj)
    elif kind == "EndpointSlice":
        services.default_endpointslice(obj)
    elif kind == "Namespace":
        other.default_namespace(obj)
    elif kind == "Secret":
        other.default_secret(obj)
    elif kind == "NetworkPolicy":
        other.default_networkpolicy(obj)


def validate(rt: ResourceType, obj: dict, old: dict | None, cfg: Config) -> list[dict]:
    c = Causes()
    validate_metadata(c, rt, obj)
    kind = rt.kind
    if kind == "Pod":
        pods.validate_pod(c, obj, old)
    elif kind in WORKLOADS:
        pods.validate_workload(c, obj, old, kind)
    elif kind == "Service":
        services.validate_service(c, obj, old, cfg.service_cidr, cfg.node_ports)
    elif kind == "Endpoints":
        services.validate_endpoints(c, obj)
    elif kind == "EndpointSlice":
        services.validate_endpointslice(c, obj)
    elif kind == "Secret":
        other.validate_secret(c, obj)
    elif kind == "ConfigMap":
        other.validate_configmap(c, obj)
    elif kind == "Node":
        other.validate_node(c, obj)
    elif kind == "NetworkPolicy":
        other.validate_networkpolicy(c, obj)
    elif kind == "Ingress":
        other.validate_ingress(c, obj)
    elif kind == "IngressClass":
        other.validate_ingressclass(c, obj)
    return c.items


def validate_metadata(c: Causes, rt: ResourceType, obj: dict) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        c.required("metadata")
        return
    name = meta.get("name")
    if not name:
        c.required("metadata.name", "name or generateName is required")
    elif rt.kind == "Namespace":
        c.dns_label("metadata.name", name)
    elif rt.kind == "Service":
        c.dns1035("metadata.name", name)
    else:
        c.dns_subdomain("metadata.name", name)
    c.labels("metadata.labels", meta.get("labels"))
    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            c.invalid("metadata.annotations", annotations, "must be a map of strings")
        else:
            for k in annotations:
                if not selectors.valid_label_key(k):
                    c.invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, "
                                                         "'-', '_' or '.'")
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for key in ("apiVersion", "kind", "name", "uid"):
            if not get(ref, key):
                c.required(f"metadata.ownerReferences[{i}].{key}")


def assign_service(obj: dict, old: dict | None, cfg: Config, used_ips: set[str], used_ports: set[int]) -> list[dict]:
    c = Causes()
    services.assign(c, obj, old, cfg.service_cidr, cfg.node_ports, used_ips, used_ports)
    return c.items
