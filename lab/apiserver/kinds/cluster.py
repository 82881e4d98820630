"""Namespaces (their deletion finalizes: Terminating, content, then the namespace; the system
ones may not go), Nodes (Events: events.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab.apiserver import tables
from lab.apiserver.errors import ApiError
from lab.apiserver.strategy import Config, Deletion, Strategy
from lab.apiserver.tables import AGE, NAME, NONE, column, get
from lab.apiserver.validation import Causes

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE = SYSTEM_NAMESPACES[:3]


class Namespaces(Strategy):
    name_rule = "label"
    columns = [NAME, column("Status"), AGE]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        # kube-apiserver labels every namespace with its name (namespaceSelector matches on it).
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name")

    def deletion(self, obj: dict[str, Any], options: Mapping[str, Any]) -> Deletion:
        name = get(obj, "metadata", "name", default="")
        if name in UNDELETABLE:
            raise ApiError(403, f'namespaces "{name}" is forbidden: this namespace may not be deleted', "Forbidden",
                           name=name, kind="namespaces")
        return Deletion(finalize=True)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.name(obj), get(obj, "status", "phase", default=""), tables.age(obj)]


def _pod_cidrs(node: dict[str, Any]) -> list[str]:
    """A node's pod ranges (spec.podCIDRs, or the older single spec.podCIDR)."""
    cidrs = get(node, "spec", "podCIDRs", default=None) or []
    if not cidrs and get(node, "spec", "podCIDR"):
        cidrs = [get(node, "spec", "podCIDR")]
    return list(cidrs)


class Nodes(Strategy):
    merge_keys = {("status", "addresses"): "type"}
    # kube-apiserver's node status strategy resets only the spec: labels and annotations written
    # through nodes/status stay (flannel publishes its annotations that way).
    status_writes_metadata = ("labels", "annotations")
    columns = [NAME, column("Status"), column("Roles"), AGE, column("Version"), column("Internal-IP", priority=1),
               column("External-IP", priority=1), column("OS-Image", priority=1),
               column("Kernel-Version", priority=1), column("Container-Runtime", priority=1)]

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        for i, a in enumerate(get(obj, "status", "addresses", default=[])):
            if not isinstance(a, dict) or not a.get("type"):
                c.required(f"status.addresses[{i}].type")
        cidr = get(obj, "spec", "podCIDR")
        if cidr:
            c.cidr("spec.podCIDR", cidr)
        # kube-apiserver: the node IPAM controller may give a node its ranges once; after that
        # they are fixed (pods and routes were made from them).
        if old is not None and _pod_cidrs(old) and _pod_cidrs(obj) != _pod_cidrs(old):
            c.forbidden("spec.podCIDRs", 'node updates may not change podCIDR except from "" to valid')

    def row(self, obj: dict[str, Any]) -> list[Any]:
        ready = next((c for c in get(obj, "status", "conditions", default=[]) if c.get("type") == "Ready"), None)
        status = "Ready" if ready and ready.get("status") == "True" else ("NotReady" if ready else "Unknown")
        if get(obj, "spec", "unschedulable"):
            status += ",SchedulingDisabled"
        roles = sorted(k.split("/", 1)[1] for k in get(obj, "metadata", "labels", default={})
                       if k.startswith("node-role.kubernetes.io/"))
        addrs = get(obj, "status", "addresses", default=[])

        def addr(kind: str) -> str:
            return next((a.get("address") for a in addrs if a.get("type") == kind), NONE)
        info = get(obj, "status", "nodeInfo", default={})
        return [tables.name(obj), status, ",".join(roles) or NONE, tables.age(obj), info.get("kubeletVersion", ""),
                addr("InternalIP"), addr("ExternalIP"), info.get("osImage", "<unknown>"),
                info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion", "<unknown>")]

