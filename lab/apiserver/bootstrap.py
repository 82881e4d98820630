"""What exists from the start, as on a fresh cluster: the system namespaces, the `kubernetes`
Service (the first address of the service range) with Endpoints pointing at this server, the
`kubernetes` ServiceCIDR (the service range, as kube-apiserver's --service-cluster-ip-range), the
default cluster roles every client needs (kube-apiserver's bootstrap policy, the part that is
not about its own controllers: cluster-admin for system:masters, discovery, basic-user and
public info for everyone), and the RBAC objects of the policy files the server was given (the
lab: deploy/rbac.yaml). Roles and bindings are kept as written here: a changed one is updated
at start, as kube-apiserver reconciles its bootstrap roles."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable
from typing import Any

import yaml

from lab.apiserver.errors import ApiError
from lab.apiserver.kinds.cluster import SYSTEM_NAMESPACES
from lab.apiserver.registry import Registry
from lab.apiserver.resources import by_kind

log = logging.getLogger("lab.apiserver.bootstrap")


RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
_DISCOVERY_URLS = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                   "/readyz", "/version", "/version/"]
_PUBLIC_INFO_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]


def _cluster_role(name: str, rules: list[dict]) -> dict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules}


def _user_binding(name: str, users: list[str]) -> dict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": u} for u in users]}


def _group_binding(name: str, groups: list[str]) -> dict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups]}


DEFAULT_POLICY: list[dict] = [
    _cluster_role("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                    {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
    _cluster_role("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}]),
    _cluster_role("system:public-info-viewer", [{"nonResourceURLs": _PUBLIC_INFO_URLS, "verbs": ["get"]}]),
    _cluster_role("system:basic-user", [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]}]),
    # What kube-proxy needs, bound to the user kubeadm gives it (kube-apiserver v1.37's rules).
    _cluster_role("system:node-proxier", [
        {"apiGroups": [""], "resources": ["endpoints", "services"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["servicecidrs"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]),
    _group_binding("cluster-admin", ["system:masters"]),
    _group_binding("system:discovery", ["system:authenticated"]),
    _group_binding("system:basic-user", ["system:authenticated"]),
    _group_binding("system:public-info-viewer", ["system:authenticated", "system:unauthenticated"]),
    _user_binding("system:node-proxier", ["system:kube-proxy"]),
]


def load_policy(paths: Iterable[str]) -> list[dict]:
    """The RBAC objects of the manifests at `paths` (other kinds in them are skipped: a
    ServiceAccount's namespace is the installer's business)."""
    out = []
    for path in paths:
        with open(path) as f:
            try:
                docs = list(yaml.safe_load_all(f))
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: {e}") from None
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") in RBAC_KINDS and \
                    str(doc.get("apiVersion", "")).startswith(RBAC_GROUP + "/"):
                out.append(doc)
    return out


async def apply_policy(reg: Registry, objs: Iterable[dict]) -> None:
    """Create each object, or update it where it differs from what is stored."""
    for obj in objs:
        rt = by_kind(RBAC_GROUP, obj["kind"])
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") if rt.namespaced else None
        try:
            current = await reg.get(rt, ns, meta.get("name", ""))
        except ApiError as e:
            if e.code != 404:
                raise
            await reg.create(rt, ns, copy.deepcopy(obj))
            continue
        want = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
        have = {k: current.get(k) for k in want}
        if want != have or any((current["metadata"].get(k) or {}) != (meta.get(k) or {})
                               for k in ("labels", "annotations") if k in meta):
            new = copy.deepcopy(obj)
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                await reg.update(rt, ns, meta["name"], new)
            except ApiError as e:  # e.g. a binding's roleRef, which cannot change: left as it is
                log.warning("policy: %s %s not updated: %s", obj["kind"], meta.get("name"), e.message)


async def bootstrap(reg: Registry, advertise_ip: str | None = None, advertise_port: int = 6443,
                    policy: Iterable[dict] = ()) -> None:
    await apply_policy(reg, [*DEFAULT_POLICY, *policy])
    namespaces = by_kind("", "Namespace")
    for ns in SYSTEM_NAMESPACES:
        with contextlib.suppress(ApiError):
            await reg.create(namespaces, None, {"metadata": {"name": ns}})
    with contextlib.suppress(ApiError):  # already there (a restarted server)
        await reg.create(by_kind("networking.k8s.io", "ServiceCIDR"), None, {
            "metadata": {"name": "kubernetes"}, "spec": {"cidrs": [str(c.network) for c in reg.cfg.service_cidrs]}})
    services, endpoints = by_kind("", "Service"), by_kind("", "Endpoints")
    labels = {"component": "apiserver", "provider": "kubernetes"}
    try:
        await reg.get(services, "default", "kubernetes")
    except ApiError:
        svc = {"metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
               "spec": {"clusterIP": reg.cfg.service_cidr.api_service_ip, "type": "ClusterIP",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise_port}]}}
        try:
            await reg.create(services, "default", svc)
        except ApiError as e:  # e.g. the first address already taken by a hand-made Service
            log.warning("kubernetes service: %s", e.message)
    if not advertise_ip:
        return
    ep: dict[str, Any] = {"metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
          "subsets": [{"addresses": [{"ip": advertise_ip}],
                       "ports": [{"name": "https", "port": advertise_port, "protocol": "TCP"}]}]}
    try:
        current = await reg.get(endpoints, "default", "kubernetes")
        ep["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await reg.update(endpoints, "default", "kubernetes", ep)
    except ApiError as e:
        if e.code != 404:
            raise
        await reg.create(endpoints, "default", ep)
