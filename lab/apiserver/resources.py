"""The kinds this server serves, one line each: what discovery advertises, what routing resolves,
and the strategy (`lab/apiserver/kinds/`) that holds everything the kind does differently.

Adding a kind is one line here plus, if it has behaviour of its own (defaults, validation,
allocation, deletion, columns), its strategy class; storage, verbs, watch, the watch cache and
tables are generic. lab/apiserver/README.md says what else a kind may need (its model in
knet.kube, for components that read it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.apiserver.kinds import cluster, config, endpoints, events, networking, pods, rbac, services, workloads
from lab.apiserver.strategy import Strategy

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUB_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"], "binding": ["create"]}
# Subresources with a kind of their own (group, version, kind); the rest return the parent kind.
SUB_KINDS = {"scale": ("autoscaling", "v1", "Scale"), "binding": ("", "v1", "Binding")}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Field selectors kube-apiserver supports for this kind, besides metadata.name / metadata.namespace.
    fields: tuple[str, ...] = ()
    verbs: tuple[str, ...] = tuple(VERBS)
    strategy: Strategy = field(default_factory=Strategy, compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """`deployments.apps`: the name kube-apiserver uses in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


_ALL = ("all",)
_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
               "status.phase", "status.podIP", "status.nominatedNodeName")
_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                 "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                 "reason", "reportingComponent", "source", "type")

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",), fields=("status.phase",),
                 strategy=cluster.Namespaces()),
    ResourceType("", "v1", "pods", "Pod", True, ("po",), ("status", "binding"), _ALL, _POD_FIELDS,
                 strategy=pods.Pods()),
    ResourceType("", "v1", "services", "Service", True, ("svc",), ("status",), _ALL, ("spec.clusterIP", "spec.type"),
                 strategy=services.Services()),
    ResourceType("", "v1", "endpoints", "Endpoints", True, ("ep",), strategy=endpoints.Endpoints()),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), ("status",), fields=("spec.unschedulable",),
                 strategy=cluster.Nodes()),
    ResourceType("", "v1", "secrets", "Secret", True, fields=("type",), strategy=config.Secrets()),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",), strategy=config.ConfigMaps()),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    ResourceType("", "v1", "events", "Event", True, ("ev",), fields=_EVENT_FIELDS, strategy=events.Events()),
    # The legacy way to bind a pod (POST a Binding named like the pod); pods/binding is the other.
    ResourceType("", "v1", "bindings", "Binding", True, verbs=("create",), strategy=pods.Bindings()),
    ResourceType("", "v1", "replicationcontrollers", "ReplicationController", True, ("rc",), ("status", "scale"),
                 _ALL, ("status.replicas",), strategy=workloads.ReplicationControllers()),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status", "scale"), _ALL,
                 strategy=workloads.Deployments()),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), ("status", "scale"), _ALL,
                 ("status.replicas",), strategy=workloads.ReplicaSets()),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), ("status", "scale"), _ALL,
                 strategy=workloads.StatefulSets()),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), ("status",), _ALL,
                 strategy=workloads.DaemonSets()),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True,
                 strategy=endpoints.EndpointSlices()),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",),
                 strategy=networking.NetworkPolicies()),
    ResourceType("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",), ("status",),
                 strategy=networking.Ingresses()),
    ResourceType("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False,
                 strategy=networking.IngressClasses()),
    # The service ranges (kube-apiserver's default one, made by bootstrap); kube-proxy watches them.
    ResourceType("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", False, (), ("status",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceType(rbac.GROUP, "v1", "roles", "Role", True, strategy=rbac.Roles()),
    ResourceType(rbac.GROUP, "v1", "clusterroles", "ClusterRole", False, strategy=rbac.ClusterRoles()),
    ResourceType(rbac.GROUP, "v1", "rolebindings", "RoleBinding", True, strategy=rbac.RoleBindings()),
    ResourceType(rbac.GROUP, "v1", "clusterrolebindings", "ClusterRoleBinding", False,
                 strategy=rbac.ClusterRoleBindings()),
)

# Views of another kind's storage (the strategy's `stored_as`): routed, listed in discovery, and
# converted by the server; the registry, the watch cache and the lifecycle see only the stored kind.
VIEWS: tuple[ResourceType, ...] = (
    # (field selectors: the view converts them to the stored kind's, which checks them)
    ResourceType("events.k8s.io", "v1", "events", "Event", True, ("ev",),
                 strategy=events.EventsV1()),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in (*RESOURCES, *VIEWS)}
_BY_KIND = {(r.group, r.kind): r for r in (*RESOURCES, *VIEWS)}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(group: str, kind: str) -> ResourceType:
    return _BY_KIND[(group, kind)]


def namespaced() -> list[ResourceType]:
    return [r for r in RESOURCES if r.namespaced]


def group_versions() -> dict[str, list[str]]:
    """group -> versions, in the order discovery lists them ("" is the legacy core group)."""
    out: dict[str, list[str]] = {}
    for r in (*RESOURCES, *VIEWS):
        versions = out.setdefault(r.group, [])
        if r.version not in versions:
            versions.append(r.version)
    return out


def resource_list(group: str, version: str) -> dict | None:
    """The APIResourceList of one group version (kubectl's discovery reads verbs, shortNames and the
    `scale` subresource's group/version/kind from it)."""
    items = [r for r in (*RESOURCES, *VIEWS) if r.group == group and r.version == version]
    if not items:
        return None
    out = []
    for r in items:
        entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        out.append(entry)
        for sub in r.subresources:
            g, v, k = SUB_KINDS.get(sub, (r.group, r.version, r.kind))
            sub_entry = {"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced, "kind": k,
                         "verbs": SUB_VERBS[sub]}
            if sub in SUB_KINDS:
                sub_entry["group"], sub_entry["version"] = g, v
            out.append(sub_entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}
