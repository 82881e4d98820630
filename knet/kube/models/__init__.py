"""pydantic models of the Kubernetes objects knet uses, and `parse`, the one way daemons read them.

    from knet.kube.models import Service, parse
    svc = parse(Service, raw_dict)        # or parse("Service", raw_dict)
    if svc is None: ...                   # malformed: already logged, skip it

Models keep unknown fields (`to_dict()` writes them back) and treat them as read-only data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from knet.kube.models.apps import (
    DaemonSet,
    DaemonSetSpec,
    DaemonSetStatus,
    Deployment,
    DeploymentSpec,
    DeploymentStatus,
    DeploymentStrategy,
    ReplicaSet,
    ReplicaSetSpec,
    ReplicaStatus,
    ReplicationController,
    ReplicationControllerSpec,
    RollingUpdateDeployment,
    StatefulSet,
    StatefulSetSpec,
    StatefulSetStatus,
)
from knet.kube.models.core import (
    ConfigMap,
    Container,
    ContainerPort,
    ContainerStatus,
    EndpointAddress,
    EndpointPort,
    Endpoints,
    EndpointSubset,
    EnvVar,
    ExecAction,
    HTTPGetAction,
    Namespace,
    Node,
    NodeAddress,
    Pod,
    PodIP,
    PodSpec,
    PodStatus,
    PodTemplateSpec,
    Probe,
    Secret,
    Service,
    ServicePort,
    ServiceSpec,
    ServiceStatus,
    TCPSocketAction,
)
from knet.kube.models.meta import (
    Condition,
    KubeModel,
    KubeObject,
    LabelSelector,
    LabelSelectorRequirement,
    LoadBalancerIngress,
    LoadBalancerStatus,
    ObjectMeta,
    ObjectReference,
    OwnerReference,
    object_key,
)
from knet.kube.models.networking import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointSlice,
    EndpointSlicePort,
    HTTPIngressPath,
    Ingress,
    IngressBackend,
    IngressClass,
    IngressRule,
    IngressServiceBackend,
    IngressTLS,
    IPBlock,
    NetworkPolicy,
    NetworkPolicyEgressRule,
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicySpec,
    ServiceBackendPort,
)

log = logging.getLogger("knet.kube")

MODELS: dict[str, type[KubeObject]] = {
    m.__name__: m
    for m in (
        Pod, Service, Endpoints, EndpointSlice, Namespace, Node, NetworkPolicy, Ingress, IngressClass,
        Secret, ConfigMap, Deployment, ReplicaSet, ReplicationController, StatefulSet, DaemonSet,
    )
}

M = TypeVar("M", bound=KubeObject)


def model_for(kind: str | type[M]) -> type[KubeObject]:
    """The model class of a kind name ("Pod", case-insensitive) or the class itself."""
    if isinstance(kind, type):
        return kind
    model = MODELS.get(kind) or next((m for k, m in MODELS.items() if k.lower() == kind.lower()), None)
    if model is None:
        raise KeyError(f"no model for kind {kind!r}")
    return model


def _describe(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    name = meta.get("name") or meta.get("generateName") or "?"
    return f"{meta['namespace']}/{name}" if meta.get("namespace") else str(name)


def _reason(err: ValidationError, limit: int = 3) -> str:
    parts = []
    for e in err.errors()[:limit]:
        loc = ".".join(str(p) for p in e["loc"]) or "<object>"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


@overload
def parse(kind: type[M], raw: Any) -> M | None: ...
@overload
def parse(kind: str, raw: Any) -> KubeObject | None: ...
def parse(kind: str | type[M], raw: Any) -> KubeObject | None:
    """Validate one object; on any problem log "skipping malformed <kind> <ns>/<name>: <reason>"
    and return None. Never raises for bad data (an unknown `kind` is a programming error: KeyError).
    """
    model = model_for(kind)
    kind_name = model.__name__
    if not isinstance(raw, Mapping):
        log.warning("skipping malformed %s ?: not an object (%s)", kind_name, type(raw).__name__)
        return None
    meta = raw.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        # Server-side-apply bookkeeping: often larger than the object itself and never used here.
        raw = {**raw, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        log.warning("skipping malformed %s %s: %s", kind_name, _describe(raw), _reason(e))
    except Exception as e:  # a daemon must survive any input; log what it was
        log.warning("skipping malformed %s %s: %s: %s", kind_name, _describe(raw), type(e).__name__, e)
    return None


__all__ = [
    "MODELS", "SERVICE_NAME_LABEL", "Condition", "ConfigMap", "Container", "ContainerPort", "ContainerStatus",
    "DaemonSet", "DaemonSetSpec", "DaemonSetStatus",
    "Deployment", "DeploymentSpec", "DeploymentStatus", "DeploymentStrategy", "Endpoint", "EndpointAddress",
    "EndpointConditions", "EndpointPort", "EndpointSlice", "EndpointSlicePort", "EndpointSubset", "Endpoints",
    "EnvVar", "ExecAction", "HTTPGetAction", "HTTPIngressPath", "IPBlock", "Ingress", "IngressBackend",
    "IngressClass", "IngressRule", "IngressServiceBackend", "IngressTLS", "KubeModel", "KubeObject",
    "LabelSelector", "LabelSelectorRequirement", "LoadBalancerIngress", "LoadBalancerStatus", "Namespace",
    "NetworkPolicy", "NetworkPolicyEgressRule", "NetworkPolicyIngressRule", "NetworkPolicyPeer",
    "NetworkPolicyPort", "NetworkPolicySpec", "Node", "NodeAddress", "ObjectMeta", "ObjectReference",
    "OwnerReference", "Pod", "PodIP", "PodSpec", "PodStatus", "PodTemplateSpec", "Probe", "ReplicaSet",
    "ReplicaSetSpec", "ReplicaStatus", "ReplicationController", "ReplicationControllerSpec",
    "RollingUpdateDeployment", "Secret", "Service", "ServiceBackendPort", "ServicePort", "ServiceSpec",
    "ServiceStatus", "StatefulSet", "StatefulSetSpec", "StatefulSetStatus", "TCPSocketAction",
    "model_for", "object_key", "parse",
]
