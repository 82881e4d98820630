"""Which API, path and typed client methods serve each kind.

Requests go through the official client's generated methods (CoreV1Api.list_namespaced_pod, ...)
with `_preload_content=False`: that keeps the client's auth, TLS, proxy and token refresh, and the
method names have been stable across client releases, while the raw JSON comes back to be
validated by our own models (see informer.py for why not the client's models).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client

from knet.kube.models import MODELS, KubeObject


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str  # "" for core
    version: str
    plural: str
    namespaced: bool
    api_class: str  # name in kubernetes.client

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def model(self) -> type[KubeObject]:
        return MODELS[self.kind]

    @property
    def snake(self) -> str:
        """The kind as the generated method names spell it: ReplicaSet -> replica_set."""
        if self.kind == "Endpoints":
            return "endpoints"
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.kind).lower()

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base

    def method(self, api_client: Any, verb: str, *, namespace: str | None, suffix: str = "") -> Callable[..., Any]:
        """The generated method for a verb: list/read/create/replace/patch/delete, optionally on a
        subresource (`suffix="_status"`). Listing a namespaced kind without a namespace uses the
        `*_for_all_namespaces` method."""
        api = getattr(kubernetes.client, self.api_class)(api_client)
        if not self.namespaced:
            return getattr(api, f"{verb}_{self.snake}{suffix}")
        if namespace is None:
            if verb != "list":
                raise ValueError(f"{self.kind} is namespaced: {verb} needs a namespace")
            return getattr(api, f"list_{self.snake}_for_all_namespaces")
        return getattr(api, f"{verb}_namespaced_{self.snake}{suffix}")


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource("Pod", "", "v1", "pods", True, "CoreV1Api"),
        Resource("Service", "", "v1", "services", True, "CoreV1Api"),
        Resource("Endpoints", "", "v1", "endpoints", True, "CoreV1Api"),
        Resource("Namespace", "", "v1", "namespaces", False, "CoreV1Api"),
        Resource("Node", "", "v1", "nodes", False, "CoreV1Api"),
        Resource("Secret", "", "v1", "secrets", True, "CoreV1Api"),
        Resource("ConfigMap", "", "v1", "configmaps", True, "CoreV1Api"),
        Resource("ReplicationController", "", "v1", "replicationcontrollers", True, "CoreV1Api"),
        Resource("Event", "", "v1", "events", True, "CoreV1Api"),
        Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True, "DiscoveryV1Api"),
        Resource("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True, "NetworkingV1Api"),
        Resource("Ingress", "networking.k8s.io", "v1", "ingresses", True, "NetworkingV1Api"),
        Resource("IngressClass", "networking.k8s.io", "v1", "ingressclasses", False, "NetworkingV1Api"),
        Resource("Deployment", "apps", "v1", "deployments", True, "AppsV1Api"),
        Resource("ReplicaSet", "apps", "v1", "replicasets", True, "AppsV1Api"),
        Resource("StatefulSet", "apps", "v1", "statefulsets", True, "AppsV1Api"),
        Resource("DaemonSet", "apps", "v1", "daemonsets", True, "AppsV1Api"),
    )
}


def resource(kind: str | type[KubeObject]) -> Resource:
    """Look a resource up by kind ("Pod", any case), plural ("pods") or model class."""
    name = kind.__name__ if isinstance(kind, type) else kind
    if name in RESOURCES:
        return RESOURCES[name]
    lowered = name.lower()
    for r in RESOURCES.values():
        if lowered in (r.kind.lower(), r.plural):
            return r
    raise KeyError(f"unknown resource {kind!r}")
