"""Deletion and what follows it -- graceful deletion, namespace finalization, ownerReference
cascades -- and pod binding: the writes that change objects other than the one requested, or
not at once. A collaborator of the registry, which gives it the `Objects` below (the registry's
reads and compare-and-swap writes) and the kinds' strategies decide how each kind goes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from lab.apiserver import objects
from lab.apiserver.errors import MODIFIED_MSG, ApiError, conflict, invalid
from lab.apiserver.storage import KV, TxnFailed

if TYPE_CHECKING:
    from lab.apiserver.query import Query
    from lab.apiserver.resources import ResourceType

log = logging.getLogger("lab.apiserver.lifecycle")


class Objects(Protocol):
    """What the lifecycle needs from the registry (lab.apiserver.registry.Registry is one)."""

    async def read(self, rt: ResourceType, ns: str | None, name: str) -> KV:
        """The stored object (404 ApiError when there is none)."""
        ...

    async def list(self, rt: ResourceType, ns: str | None, q: Query) -> dict:
        """A List, as the list verb answers it."""
        ...

    async def commit(self, rt: ResourceType, ns: str | None, new: dict, old: KV | None) -> int:
        """Write `new` over `old` if it is still current (409 / 404 ApiError if not), with the
        allocation keys the change claims and releases; the new revision. Write hooks run."""
        ...

    async def remove(self, rt: ResourceType, ns: str | None, kv: KV) -> None:
        """Delete `kv` if it is still current, releasing what it held. Write hooks run."""
        ...

    async def in_namespace(self, rt: ResourceType, ns: str) -> builtins.list[KV]:
        """Every stored object of a namespaced kind in `ns`."""
        ...

    async def dependents(self, ns: str, uid: str) -> builtins.list[tuple[ResourceType, KV]]:
        """Objects in `ns` with an ownerReference to `uid`."""
        ...

    async def settled(self, revision: int) -> None:
        """Until every read shows the writes up to `revision` (read-your-writes for the checks
        other requests make, e.g. the terminating namespace that refuses new content)."""
        ...


class Lifecycle:
    def __init__(self, store: Objects, kinds: Sequence[ResourceType], namespaces: ResourceType) -> None:
        self.store = store
        self.kinds = kinds  # all served kinds (a namespace's content is of every namespaced one)
        self.namespaces = namespaces
        self._tasks: set[asyncio.Task] = set()

    # --- delete ---------------------------------------------------------------------------------

    async def delete(self, rt: ResourceType, ns: str | None, name: str, options: dict | None = None,
                     dry_run: bool = False) -> dict:
        options = options or {}
        kv = await self.store.read(rt, ns, name)
        pre = options.get("preconditions") or {}
        m = kv.value.get("metadata", {})
        if pre.get("uid") and pre["uid"] != m.get("uid"):
            raise conflict(rt.plural, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                            f"meta: {m.get('uid')}", rt.group)
        if pre.get("resourceVersion") and pre["resourceVersion"] != str(kv.mod_revision):
            raise conflict(rt.plural, name, MODIFIED_MSG, rt.group)
        how = rt.strategy.deletion(kv.value, options)
        obj = objects.with_rv(dict(kv.value), kv.mod_revision)
        if dry_run:
            return obj
        if how.finalize:
            return await self._finalize(rt, ns, name, kv)
        if how.grace > 0:
            return await self._mark_terminating(rt, ns, kv, how.grace)
        await self.store.remove(rt, ns, kv)
        if rt.strategy.cascades:
            policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
            self._background(self._cascade(ns, m.get("uid", ""), orphan=policy == "Orphan"))
        return obj

    async def delete_collection(self, rt: ResourceType, ns: str | None, q: Query, options: dict | None,
                                dry_run: bool) -> dict:
        listed = await self.store.list(rt, ns, q)
        for obj in listed["items"]:
            with contextlib.suppress(ApiError):
                await self.delete(rt, objects.meta(obj).get("namespace"), objects.meta(obj)["name"], options, dry_run)
        return listed

    async def _mark_terminating(self, rt: ResourceType, ns: str | None, kv: KV, grace: int) -> dict:
        """Graceful deletion, as kube-apiserver does for a pod bound to a node: the object stays,
        with deletionTimestamp (now + grace) and deletionGracePeriodSeconds; whoever runs it (the
        pod's node agent: preStop hooks, SIGTERM, SIGKILL at the deadline) deletes it for good
        with grace 0. Meanwhile the EndpointSlice controller reports it terminating, so proxies
        send it no new connections while it finishes the ones it has. A second delete may
        shorten the grace period, never lengthen it."""
        m = kv.value.get("metadata") or {}
        current = m.get("deletionGracePeriodSeconds")
        if m.get("deletionTimestamp") and current is not None and current <= grace:
            return objects.with_rv(dict(kv.value), kv.mod_revision)
        new = dict(kv.value, metadata=dict(m, deletionTimestamp=objects.now(grace), deletionGracePeriodSeconds=grace))
        rev = await self.store.commit(rt, ns, new, kv)
        return objects.with_rv(new, rev)

    async def _finalize(self, rt: ResourceType, ns: str | None, name: str, kv: KV) -> dict:
        """Like kube-apiserver's namespace deletion: the object turns Terminating, its content
        goes (in the background), then it goes."""
        obj = objects.with_rv(dict(kv.value), kv.mod_revision)
        if objects.get_path(obj, "status", "phase") != "Terminating":
            new = dict(kv.value, status=dict(kv.value.get("status") or {}, phase="Terminating"))
            new["metadata"] = dict(new["metadata"], deletionTimestamp=objects.now())
            rev = await self.store.commit(rt, ns, new, kv)
            obj = objects.with_rv(new, rev)
            await self.store.settled(rev)
            self._background(self._finalize_namespace(name))
        return obj

    async def _finalize_namespace(self, ns: str) -> None:
        for rt in self.kinds:
            if not rt.namespaced:
                continue
            for kv in await self.store.in_namespace(rt, ns):
                with contextlib.suppress(ApiError, TxnFailed):
                    await self.store.remove(rt, ns, kv)
        with contextlib.suppress(ApiError, TxnFailed):
            await self.store.remove(self.namespaces, None, await self.store.read(self.namespaces, None, ns))
        log.info("namespace %s deleted with its content", ns)

    async def _cascade(self, ns: str | None, uid: str, orphan: bool) -> None:
        """Garbage collection of dependents (ownerReferences), as kube-controller-manager's GC does:
        a dependent whose last owner is gone is deleted (or, Orphan, loses the reference)."""
        if not ns or not uid:
            return
        for rt, kv in await self.store.dependents(ns, uid):
            refs = objects.meta(kv.value).get("ownerReferences") or []
            rest = [r for r in refs if r.get("uid") != uid]
            with contextlib.suppress(ApiError, TxnFailed):
                if rest or orphan:
                    meta = dict(kv.value["metadata"], ownerReferences=rest)
                    if not rest:
                        meta.pop("ownerReferences")
                    await self.store.commit(rt, ns, dict(kv.value, metadata=meta), kv)
                else:
                    await self.delete(rt, ns, objects.meta(kv.value).get("name", ""))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
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
            kv = await self.store.read(rt, ns, name)
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
                await self.store.commit(rt, ns, new, kv)
            except ApiError as e:
                if e.code == 409:
                    continue
                raise
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        raise conflict(rt.plural, name, MODIFIED_MSG)
