"""Endpoints -> EndpointSlice mirroring (kube-controller-manager's endpointslicemirroring
controller, done synchronously on every Endpoints/Service write): a selector-less Service with a
hand-written Endpoints object gets EndpointSlices, so kproxy and kdns, which read only slices, see
its backends. Services with a selector are the EndpointSlice controller's business (not here).

What it reads (the Service, its Endpoints, the slices mirrored for it) comes from the watch cache
once that shows the write being mirrored: by name and by the slices' service-name index, so a
Service write costs the same whatever else the namespace holds.
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
        # Syncs of one name never overlap (they would both create its slices); other names run on.
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        registry.on_write.append(self.on_write)

    async def on_write(self, rt: ResourceType, ns: str | None, name: str, revision: int) -> None:
        if rt in (self.services, self.endpoints) and ns:
            try:
                await self.sync(ns, name, revision)
            except Exception:  # the write itself succeeded; a failed mirror must not fail it
                log.exception("mirroring endpoints %s/%s failed", ns, name)

    async def _read(self, ns: str, name: str, revision: int) -> tuple[dict | None, dict | None, list[dict]]:
        """The Service, its Endpoints and the slices mirrored for it, as of `revision` or later:
        from the watch cache once it has got that far (by key and by the slices' service-name
        index), else from etcd."""
        mirrored = f"{SERVICE_NAME}={name},{MANAGED_BY}={MIRROR_CONTROLLER}"
        cache = self.registry.cache
        if await cache.wait_for(revision):
            slices = [s for s in cache.kind(self.slices).by_index(f"label:{SERVICE_NAME}", name, ns)
                      if (objects.meta(s).get("labels") or {}).get(MANAGED_BY) == MIRROR_CONTROLLER]
            return cache.get(self.services, ns, name), cache.get(self.endpoints, ns, name), slices
        listed = await self.registry.list(self.slices, ns, Query(self.slices, {"labelSelector": mirrored,
                                                                               "resourceVersion": str(revision)}))
        return await self._get(self.services, ns, name), await self._get(self.endpoints, ns, name), listed["items"]

    async def _get(self, rt: ResourceType, ns: str, name: str) -> dict | None:
        try:
            return await self.registry.get(rt, ns, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    async def sync(self, ns: str, name: str, revision: int) -> None:
        key = f"{ns}/{name}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                await self._sync(ns, name, revision)
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    async def _sync(self, ns: str, name: str, revision: int) -> None:
        service, endpoints, mirrored = await self._read(ns, name, revision)
        want = {objects.meta(s)["name"]: s for s in desired_slices(service, endpoints)}
        have = {objects.meta(s)["name"]: s for s in mirrored}
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
