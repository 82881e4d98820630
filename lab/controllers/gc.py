"""Garbage collection by ownerReferences, the sweeping half.

The API server deletes dependents synchronously with their owner (background propagation); this
sweep catches what that missed (a server stopped mid-cascade, an owner deleted by writing etcd
directly), and dependents made for an owner that was already gone: a controller acting on a stale
cache (the Deployment controller making a ReplicaSet for a Deployment deleted a moment before)
creates objects whose owner no longer exists. A dependent whose every owner is gone — checked
against the server, not only the cache, because a brand-new owner may not have reached our cache
yet — is deleted. Sweeps run every `resync` seconds, when an owner is deleted, and when a
dependent appears whose owner is not in the cache, so such leftovers go within a second."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from lab.controllers import indexes
from lab.controllers.workqueue import Controller

log = logging.getLogger("lab.controllers.gc")


class GarbageCollector(Controller):
    name = "garbagecollector"
    resync = 20.0

    def __init__(self, api: ApiClient, dependents: dict[str, Informer[Any]], owners: dict[str, Informer[Any]]) -> None:
        """dependents: kind -> informer (with the OWNER index) of objects that may have owners;
        owners: kind -> informer. Keys: "*" (sweep everything), "owner/<uid>" (the dependents of
        a deleted owner), "<kind>/<namespace>/<name>" (one dependent)."""
        super().__init__()
        self.api, self.dependents, self.owners = api, dependents, owners
        for inf in owners.values():
            inf.add_handler(on_delete=lambda o: self.enqueue(f"owner/{o.metadata.uid}"))
        for kind, inf in dependents.items():
            inf.add_handler(on_add=self._on_dependent(kind))

    def _on_dependent(self, kind: str) -> Callable[[Any], None]:
        """The handler of new `kind` dependents: one whose owner is not cached is checked alone."""
        def handle(obj: Any) -> None:
            if any(r.kind in self.owners and not self._owner_cached(r.kind, obj.namespace, r.name, r.uid)
                   for r in obj.metadata.owner_references):
                self.enqueue(f"{kind}/{obj.key}")
        return handle

    def _owner_cached(self, kind: str, ns: str | None, name: str, uid: str) -> bool:
        cached = self.owners[kind].get(name, ns)
        return cached is not None and cached.metadata.uid == uid

    def all_keys(self) -> list[str]:
        return ["*"]

    def _owner_gone(self, kind: str, ns: str | None, name: str, uid: str) -> bool:
        if kind not in self.owners:
            return False  # an owner kind we do not watch: never guess
        if self._owner_cached(kind, ns, name, uid):
            return False
        live = client.get(self.api, kind, name, ns)
        return live is None or (live.get("metadata") or {}).get("uid") != uid

    def sync(self, key: str) -> None:
        if key == "*":
            for kind, inf in self.dependents.items():
                for obj in inf.list():
                    self._collect(kind, obj)
        elif key.startswith("owner/"):
            uid = key.partition("/")[2]
            for kind, inf in self.dependents.items():
                for obj in inf.by_index(indexes.OWNER, uid):
                    self._collect(kind, obj)
        else:
            kind, _, okey = key.partition("/")
            obj = self.dependents[kind].get_by_key(okey) if kind in self.dependents else None
            if obj is not None:
                self._collect(kind, obj)

    def _collect(self, kind: str, obj: Any) -> None:
        """Delete `obj` if every one of its owners is gone."""
        refs = obj.metadata.owner_references
        if not refs or obj.is_terminating:
            return
        if all(self._owner_gone(r.kind, obj.namespace, r.name, r.uid) for r in refs):
            log.info("deleting %s %s: its owner %s is gone", kind, obj.key,
                     ", ".join(f"{r.kind}/{r.name}" for r in refs))
            client.delete(self.api, kind, obj.name, obj.namespace)
