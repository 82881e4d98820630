"""Deletion and the cascades that follow it (namespace content, ownerReferences), and pod
binding: the parts of the registry that change objects other than the one requested.

A mixin of Registry (registry.py), which provides store, key(), read(), list(), _txn(),
_raise_txn() and on_write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from lab.apiserver import admission_services as svc_admission
from lab.apiserver import objects
from lab.apiserver.errors import MODIFIED_MSG, ApiError, conflict, invalid
from lab.apiserver.resources import RESOURCES, ResourceType, by_kind
from lab.apiserver.storage import KV, TxnFailed

if TYPE_CHECKING:
    from lab.apiserver.registry import Query

log = logging.getLogger("lab.apiserver.registry")

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IPS, PORTS = "serviceips", "servicenodeports"


def pod_grace(pod: dict, options: dict) -> int:
    """Seconds a deleted pod gets to stop: DeleteOptions.gracePeriodSeconds, else the pod's
    terminationGracePeriodSeconds (default 30). 0 -- deleted at once -- for a pod no node runs
    (unscheduled) or that has finished, as kube-apiserver does."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    grace = options.get("gracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds")
    if grace is None:
        grace = 30
    return max(0, int(grace))


class Lifecycle:
    store: Any
    on_write: list
    _tasks: set[asyncio.Task]

    # --- delete ---------------------------------------------------------------------------------

    async def delete(self, rt: ResourceType, ns: str | None, name: str, options: dict | None = None,
                     dry_run: bool = False) -> dict:
        options = options or {}
        kv = await self.read(rt, ns, name)
        pre = options.get("preconditions") or {}
        m = kv.value.get("metadata", {})
        if pre.get("uid") and pre["uid"] != m.get("uid"):
            raise conflict(rt.plural, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                            f"meta: {m.get('uid')}", rt.group)
        if pre.get("resourceVersion") and pre["resourceVersion"] != str(kv.mod_revision):
            raise conflict(rt.plural, name, MODIFIED_MSG, rt.group)
        obj = objects.with_rv(kv.value, kv.mod_revision)
        if dry_run:
            return obj
        if rt.kind == "Namespace":
            return await self._delete_namespace(rt, name, kv)
        if rt.kind == "Pod":
            grace = pod_grace(kv.value, options)
            if grace > 0:
                return await self._terminate_pod(rt, ns, name, kv, grace)
        await self._delete_kv(rt, ns, name, kv)
        if rt.kind not in ("Pod", "Event"):
            policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
            self._background(self._cascade(ns, m.get("uid", ""), orphan=policy == "Orphan"))
        return obj

    async def _delete_kv(self, rt: ResourceType, ns: str | None, name: str, kv: KV) -> None:
        key = self.key(rt, ns, name)
        releases = []
        if rt.kind == "Service":
            ips, ports = svc_admission.allocations(kv.value)
            releases = [self.store.alloc_key(IPS, ip) for ip in ips] + [self.store.alloc_key(PORTS, p) for p in ports]
        try:
            await self.store.txn({}, [key, *releases], {key: kv.mod_revision})
        except TxnFailed as e:
            self._raise_txn(rt, name, key, kv, e)
        for hook in self.on_write:
            await hook(rt, ns, name)

    async def delete_collection(self, rt: ResourceType, ns: str | None, q: Query, options: dict | None,
                                dry_run: bool) -> dict:
        listed = await self.list(rt, ns, q)
        for obj in listed["items"]:
            with contextlib.suppress(ApiError):
                await self.delete(rt, objects.meta(obj).get("namespace"), objects.meta(obj)["name"], options, dry_run)
        return listed

    async def _terminate_pod(self, rt: ResourceType, ns: str | None, name: str, kv: KV, grace: int) -> dict:
        """Graceful deletion, as kube-apiserver does for a pod bound to a node: the pod stays, with
        deletionTimestamp (now + grace) and deletionGracePeriodSeconds; its node's agent stops it
        (preStop hooks, SIGTERM, SIGKILL at the deadline), gives the sandbox back and then deletes
        it for good with grace 0. Meanwhile the EndpointSlice controller reports it terminating,
        so proxies send it no new connections while it finishes the ones it has. A second delete
        may shorten the grace period, never lengthen it."""
        m = kv.value.get("metadata") or {}
        current = m.get("deletionGracePeriodSeconds")
        if m.get("deletionTimestamp") and current is not None and current <= grace:
            return objects.with_rv(kv.value, kv.mod_revision)
        new = dict(kv.value, metadata=dict(m, deletionTimestamp=objects.now(grace), deletionGracePeriodSeconds=grace))
        rev = await self._txn(rt, name, self.key(rt, ns, name), new, kv, {}, [], False)
        for hook in self.on_write:
            await hook(rt, ns, name)
        return objects.with_rv(new, rev)

    async def _delete_namespace(self, rt: ResourceType, name: str, kv: KV) -> dict:
        if name in SYSTEM_NAMESPACES[:3]:
            raise ApiError(403, f'namespaces "{name}" is forbidden: this namespace may not be deleted', "Forbidden",
                           name=name, kind="namespaces")
        obj = objects.with_rv(kv.value, kv.mod_revision)
        if objects.get_path(obj, "status", "phase") != "Terminating":
            # Like kube-apiserver: the namespace turns Terminating, its content goes, then it goes.
            new = dict(kv.value, status=dict(kv.value.get("status") or {}, phase="Terminating"))
            new["metadata"] = dict(new["metadata"], deletionTimestamp=objects.now())
            rev = await self._txn(rt, name, self.key(rt, None, name), new, kv, {}, [], False)
            obj = objects.with_rv(new, rev)
            self._background(self._finalize_namespace(name))
        return obj

    async def _finalize_namespace(self, ns: str) -> None:
        for rt in RESOURCES:
            if not rt.namespaced:
                continue
            kvs, _, _ = await self.store.list(self.key(rt, ns))
            for kv in kvs:
                with contextlib.suppress(ApiError, TxnFailed):
                    await self._delete_kv(rt, ns, objects.meta(kv.value).get("name", ""), kv)
        rt = by_kind("", "Namespace")
        kv = await self.store.get(self.key(rt, None, ns))
        if kv is not None:
            await self.store.txn({}, [kv.key], {kv.key: kv.mod_revision})
        log.info("namespace %s deleted with its content", ns)

    async def _cascade(self, ns: str | None, uid: str, orphan: bool) -> None:
        """Garbage collection of dependents (ownerReferences), as kube-controller-manager's GC does:
        a dependent whose last owner is gone is deleted (or, Orphan, loses the reference)."""
        if not ns or not uid:
            return
        for rt in RESOURCES:
            if not rt.namespaced or rt.kind == "Event":
                continue
            kvs, _, _ = await self.store.list(self.key(rt, ns))
            for kv in kvs:
                refs = objects.meta(kv.value).get("ownerReferences") or []
                if uid not in objects.owner_uids(kv.value):
                    continue
                name = objects.meta(kv.value).get("name", "")
                rest = [r for r in refs if r.get("uid") != uid]
                with contextlib.suppress(ApiError, TxnFailed):
                    if rest or orphan:
                        new = dict(kv.value, metadata=dict(kv.value["metadata"], ownerReferences=rest))
                        if not rest:
                            new["metadata"].pop("ownerReferences")
                        await self.store.txn({kv.key: new}, [], {kv.key: kv.mod_revision})
                    else:
                        await self.delete(rt, ns, name)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    async def drain(self) -> None:
        """Wait for background cascades (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- pods/binding ---------------------------------------------------------------------------

    async def bind(self, rt: ResourceType, ns: str | None, name: str, body: Any) -> dict:
        target = objects.get_path(body, "target", "name") if isinstance(body, dict) else None
        if not target:
            raise invalid("Binding", name, [{"reason": "FieldValueRequired", "field": "target.name",
                                             "message": "Required value"}])
        for _ in range(5):
            kv = await self.read(rt, ns, name)
            node = objects.get_path(kv.value, "spec", "nodeName")
            if node:
                raise conflict(rt.plural, name, f"pod {name} is already assigned to node \"{node}\"")
            new = dict(kv.value, spec=dict(kv.value["spec"], nodeName=target))
            status = dict(new.get("status") or {})
            conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            status["conditions"] = [*conds, {"type": "PodScheduled", "status": "True",
                                             "lastTransitionTime": objects.now()}]
            new["status"] = status
            try:
                await self._txn(rt, name, kv.key, new, kv, {}, [], False)
            except ApiError as e:
                if e.code == 409:
                    continue
                raise
            for hook in self.on_write:
                await hook(rt, ns, name)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        raise conflict(rt.plural, name, MODIFIED_MSG)
