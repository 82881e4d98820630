"""Endpoints -> EndpointSlice mirroring (kube-controller-manager's endpointslicemirroring
controller, done synchronously on every Endpoints/Service write): a selector-less Service with a
hand-written Endpoints object gets EndpointSlices, so kproxy and kdns, which read only slices, see
its backends. Services with a selector are the EndpointSlice controller's business (not here).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any

from lab.apiserver import objects
from lab.apiserver.errors import ApiError
from lab.apiserver.query import Query
from lab.apiserver.registry import Registry
from lab.apiserver.resources import ResourceType, by_kind

log = logging.getLogger("lab.apiserver.mirror")

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MIRROR_CONTROLLER = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"


def desired_slices(service: dict | None, endpoints: dict | None) -> list[dict]:
    """The slices mirroring `endpoints` (pure); none unless the Service exists without a selector."""
    if service is None or endpoints is None or (service.get("spec") or {}).get("selector"):
        return []
    meta = endpoints.get("metadata") or {}
    if (meta.get("labels") or {}).get(SKIP_MIRROR) == "true":
        return []
    name, ns = meta.get("name", ""), meta.get("namespace", "")
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != SKIP_MIRROR}
    labels.update({SERVICE_NAME: name, MANAGED_BY: MIRROR_CONTROLLER})
    owner = {"apiVersion": "v1", "kind": "Endpoints", "name": name, "uid": meta.get("uid", ""),
             "controller": True, "blockOwnerDeletion": True}
    out = []
    for i, subset in enumerate(endpoints.get("subsets") or []):
        by_family: dict[str, list[dict]] = {}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.get(key) or []:
                family = "IPv6" if ipaddress.ip_address(a["ip"]).version == 6 else "IPv4"
                ep: dict[str, Any] = {"addresses": [a["ip"]],
                                      "conditions": {"ready": ready, "serving": ready, "terminating": False}}
                for src, dst in (("hostname", "hostname"), ("nodeName", "nodeName"), ("targetRef", "targetRef")):
                    if a.get(src):
                        ep[dst] = a[src]
                by_family.setdefault(family, []).append(ep)
        ports = [{k: p[k] for k in ("name", "port", "protocol", "appProtocol") if k in p}
                 for p in subset.get("ports") or []]
        for family, eps in sorted(by_family.items()):
            suffix = f"{i}" if family == "IPv4" else f"{i}-v6"
            out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": f"{name}-mirror-{suffix}", "namespace": ns, "labels": dict(labels),
                                     "ownerReferences": [owner]},
                        "addressType": family, "endpoints": eps, "ports": ports})
    return out


class Mirror:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.services = by_kind("", "Service")
        self.endpoints = by_kind("", "Endpoints")
        self.slices = by_kind("discovery.k8s.io", "EndpointSlice")
        self._lock = asyncio.Lock()
        registry.on_write.append(self.on_write)

    async def on_write(self, rt: ResourceType, ns: str | None, name: str) -> None:
        if rt in (self.services, self.endpoints) and ns:
            try:
                await self.sync(ns, name)
            except Exception:  # the write itself succeeded; a failed mirror must not fail it
                log.exception("mirroring endpoints %s/%s failed", ns, name)

    async def _get(self, rt: ResourceType, ns: str, name: str) -> dict | None:
        try:
            return await self.registry.get(rt, ns, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    async def sync(self, ns: str, name: str) -> None:
        async with self._lock:
            want = {objects.meta(s)["name"]: s for s in desired_slices(await self._get(self.services, ns, name),
                                                                       await self._get(self.endpoints, ns, name))}
            q = Query(self.slices, {"labelSelector": f"{SERVICE_NAME}={name},{MANAGED_BY}={MIRROR_CONTROLLER}"})
            have = {objects.meta(s)["name"]: s for s in (await self.registry.list(self.slices, ns, q))["items"]}
            for slice_name, desired in want.items():
                current = have.get(slice_name)
                if current is None:
                    await self.registry.create(self.slices, ns, desired)
                    continue
                merged = dict(desired, metadata=dict(current["metadata"], labels=desired["metadata"]["labels"],
                                                     ownerReferences=desired["metadata"]["ownerReferences"]))
                await self.registry.update(self.slices, ns, slice_name, merged)
            for slice_name in set(have) - set(want):
                with contextlib.suppress(ApiError):
                    await self.registry.lifecycle.delete(self.slices, ns, slice_name)
