"""The verbs: what kube-apiserver's generic registry does for every kind -- admission on writes,
optimistic concurrency by mod_revision, selectors on reads. Everything a kind does differently
comes from its strategy (`rt.strategy`, lab/apiserver/kinds/); deletion and its cascades are the
lifecycle's (lifecycle.py), which writes through `commit` and `remove` here.

Reads: a get goes to etcd; lists and watches are served by the watch cache (cache.py), except
what it cannot answer (paged or exact-revision lists, watches from before its window: direct.py).

Allocations (a Service's ClusterIP and nodePorts) are etcd keys (`<prefix>/ranges/serviceips/<ip>`,
`.../servicenodeports/<port>`) that the strategy says an object holds (`Strategy.held`); a write
claims the keys its change adds and releases those it drops in the same transaction as the
object, the claims with a must-not-exist compare: two Services can never hold one address, even
if two servers raced. What is free is known from in-memory bitmaps (allocator.py) that the
watch cache keeps current from those keys, so no request lists them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from lab.apiserver import admission, direct, limits, objects, patch
from lab.apiserver.allocator import Allocator, Reservation
from lab.apiserver.cache import OWNER_INDEX, KindCache, WatchCache
from lab.apiserver.direct import WatchItem
from lab.apiserver.errors import MODIFIED_MSG, ApiError, already_exists, bad_request, conflict, invalid, not_found
from lab.apiserver.lifecycle import Lifecycle
from lab.apiserver.query import Query
from lab.apiserver.resources import RESOURCES, ResourceType, by_kind
from lab.apiserver.storage import KV, Compacted, Store, TxnFailed
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.validation import Causes

log = logging.getLogger("lab.apiserver.registry")

class LeaseManager:
    """etcd leases for objects with a TTL (Events), shared by the writes of a minute as
    kube-apiserver's lease manager shares them: a lease is granted for the TTL plus that reuse
    window and handed out while it has at least the TTL left, so an object lives at least its TTL
    after its last write, at most a window more, and etcd holds a lease per window, not per write."""

    REUSE = 60.0  # seconds; less for short TTLs (a twentieth of them)

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self._current: dict[int, tuple[int, float]] = {}  # ttl -> (lease id, its expiry)
        self._lock = asyncio.Lock()

    def reuse(self, ttl: int) -> int:
        return max(1, min(int(self.REUSE), ttl // 20))

    async def lease(self, ttl: int) -> int:
        async with self._lock:
            found = self._current.get(ttl)
            now = self.clock()
            if found is not None and found[1] - now >= ttl:
                return found[0]
            granted = ttl + self.reuse(ttl)
            lease_id = await self.store.grant_lease(granted)
            self._current[ttl] = (lease_id, now + granted)
            return lease_id


PATCH_TYPES = {"application/merge-patch+json": "merge", "application/strategic-merge-patch+json": "strategic",
               "application/json-patch+json": "json"}
READY_TIMEOUT = 10.0  # a request that needs the watch cache waits this long for it, then 503
# Called after every committed write: (kind, namespace, name, revision).
WriteHook = Callable[[ResourceType, str | None, str, int], Awaitable[None]]


class Registry:
    def __init__(self, store: Store, cfg: Config | None = None) -> None:
        self.store = store
        self.cfg = cfg or Config()
        self.allocators = {name: Allocator(name, space)
                           for rt in RESOURCES for name, space in rt.strategy.ranges(self.cfg).items()}
        self.cache = WatchCache(store, RESOURCES, self._range_changed, self._ranges_listed)
        self.namespaces = by_kind("", "Namespace")
        self.on_write: list[WriteHook] = []
        self.lifecycle = Lifecycle(self, RESOURCES, self.namespaces)
        self.leases = LeaseManager(store)

    async def start(self) -> None:
        """List the store into the watch cache (and the allocators), then follow it."""
        await self.cache.start()

    async def stop(self) -> None:
        await self.cache.stop()
        await self.lifecycle.drain()

    # --- allocation keys, as the watch cache sees them ---------------------------------------------

    def _range_key(self, key: str) -> tuple[Allocator, str] | None:
        prefix = self.store.alloc_key("", "")[:-1]  # "<prefix>/ranges/"
        if not key.startswith(prefix):
            return None
        name, _, value = key[len(prefix):].partition("/")
        alloc = self.allocators.get(name)
        return (alloc, value) if alloc is not None and value else None

    def _range_changed(self, key: str, raw: bytes | None, revision: int) -> None:
        found = self._range_key(key)
        if found is not None:
            found[0].apply(found[1], raw is not None, revision)

    def _ranges_listed(self, kvs: list[KV], revision: int) -> None:
        held: dict[str, list[str]] = {name: [] for name in self.allocators}
        for kv in kvs:
            found = self._range_key(kv.key)
            if found is not None:
                held[found[0].name].append(found[1])
        for name, alloc in self.allocators.items():
            alloc.reset(held[name], revision)

    # --- the watch cache's readiness and freshness -------------------------------------------------

    async def _ready(self) -> None:
        if self.cache.ready.is_set():
            return
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.cache.ready.wait()
        except TimeoutError:
            raise ApiError(503, "storage is (re)initializing", "ServiceUnavailable") from None

    async def _cache_current(self, rv: str | None) -> bool:
        """Whether the cache can answer a read "at least as new as rv" (None: every write
        acknowledged so far; "0": any); waits for it to catch up."""
        await self._ready()
        if rv == "0":
            return True
        if rv is None:
            return await self.cache.fresh()
        return await self.cache.wait_for(int(rv), timeout=3.0)

    async def settled(self, revision: int) -> None:
        """Until reads from the cache show every write up to `revision` (read-your-writes)."""
        await self.cache.wait_for(revision)

    # --- reads ----------------------------------------------------------------------------------

    def key(self, rt: ResourceType, ns: str | None, name: str = "") -> str:
        return self.store.key(rt.plural, ns if rt.namespaced else None, name)

    async def read(self, rt: ResourceType, ns: str | None, name: str) -> KV:
        kv = await self.store.get(self.key(rt, ns, name))
        if kv is None:
            raise not_found(rt.plural, name, rt.group)
        return kv

    async def get(self, rt: ResourceType, ns: str | None, name: str) -> dict:
        kv = await self.read(rt, ns, name)
        return objects.with_rv(kv.value, kv.mod_revision)

    async def list(self, rt: ResourceType, ns: str | None, q: Query) -> dict:
        exact = q.rv not in (None, "0") and q.rv_match == "Exact"
        if not (q.limit or q.cont or exact) and await self._cache_current(q.rv):
            items, meta = self.cache.kind(rt).select(ns, q), {"resourceVersion": str(self.cache.revision)}
        else:
            items, meta = await direct.list_objects(self.store, self.key(rt, ns), q)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    async def watch(self, rt: ResourceType, ns: str | None, q: Query, stopping: asyncio.Event,
                    tick: float) -> AsyncGenerator[WatchItem, None]:
        """(type, object, encoded line) events until `stopping` is set (or the cache ends the
        watch); ("ERROR", Status, None) and the end when the start is compacted; ("TICK", None,
        None) after `tick` idle seconds. Progress (how far the stream has got without anything
        for this client, material for bookmarks) comes as ("PROGRESS", revision, None) from
        etcd, or once as ("PROGRESS_SOURCE", callable, None) from the cache."""
        if stopping.is_set():
            return
        kind = self.cache.kind(rt)
        if q.send_initial is not None:  # watch-list: a snapshot at least as new as rv from the cache
            async for item in self._watch_list(kind, ns, q, tick):
                yield item
            return
        since = None if q.rv in (None, "0") else int(q.rv)
        if since is None:
            served = await self._cache_current(q.rv)
        else:
            await self._ready()
            if since > self.cache.revision:
                await self.cache.wait_for(since, timeout=3.0)
            served = kind.covers(since) and since <= self.cache.revision
            if served and since + 1 <= self.cache.revision:
                try:
                    await self.store.check_not_compacted(since + 1)  # the cache remembers more than etcd
                except Compacted as e:
                    yield "ERROR", ApiError(410, f"too old resource version: {q.rv} ({e.compact_revision})",
                                            "Expired").status(), None
                    return
        if not served:
            async with contextlib.aclosing(direct.watch_objects(self.store, self.key(rt, ns), q)) as inner, \
                    contextlib.aclosing(direct.until_stopping(inner, stopping, tick)) as events:
                async for item in events:
                    yield item
            return
        watcher = kind.subscribe(ns, q, since)  # no await since the checks above: nothing slips
        yield "PROGRESS_SOURCE", watcher.progress, None
        async with contextlib.aclosing(watcher.events(tick)) as events:
            async for item in events:
                yield item

    async def _watch_list(self, kind: KindCache, ns: str | None, q: Query,
                          tick: float) -> AsyncGenerator[WatchItem, None]:
        """A streaming list: with sendInitialEvents, the objects of a state at least as new as
        rv (the newest for no rv; any for "0") as ADDED, ("INITIAL_END", revision, None) and the
        changes after that state; without, only the changes after it."""
        if not await self._cache_current(q.rv):
            raise ApiError(504, f"Timeout: Too large resource version: {q.rv}, current: {self.cache.revision}",
                           "Timeout")
        watcher = kind.subscribe(ns, q, None if q.send_initial else self.cache.revision, initial_end=True)
        yield "PROGRESS_SOURCE", watcher.progress, None
        async with contextlib.aclosing(watcher.events(tick)) as events:
            async for item in events:
                yield item

    # --- writes ---------------------------------------------------------------------------------

    def _check_body(self, rt: ResourceType, ns: str | None, body: Any, name: str | None = None) -> dict:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if (kind and kind != rt.kind) or (api_version and api_version != rt.api_version):
            raise bad_request(f"the API version in the data ({api_version}) and kind ({kind}) do not match "
                              f"{rt.api_version}, {rt.kind}")
        m = body.get("metadata")
        if m is not None and not isinstance(m, dict):
            raise bad_request("metadata must be an object")
        m = m or {}
        body_ns = m.get("namespace")
        if rt.namespaced and body_ns and body_ns != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        if name is not None and m.get("name") and m["name"] != name:
            raise bad_request("the name of the object does not match the name on the URL")
        return body

    async def _check_namespace(self, rt: ResourceType, ns: str | None) -> None:
        """The namespace must exist and not be terminating (kube-apiserver's NamespaceLifecycle
        admission, which also reads a cache first: a namespace made a moment ago may not be in
        it yet, so a miss asks etcd; a namespace marked terminating is in the cache before the
        DELETE that marked it returns)."""
        if not rt.namespaced:
            return
        obj = self.cache.get(self.namespaces, None, ns or "") if self.cache.ready.is_set() else None
        if obj is None:
            kv = await self.store.get(self.key(self.namespaces, None, ns or ""))
            if kv is None:
                raise not_found("namespaces", ns or "")
            obj = kv.value
        if objects.get_path(obj, "status", "phase") == "Terminating":
            raise ApiError(403, f"{rt.plural} is forbidden: unable to create new content in namespace {ns} "
                                f"because it is being terminated", "Forbidden", kind=rt.plural)

    async def create(self, rt: ResourceType, ns: str | None, body: Any, dry_run: bool = False) -> dict:
        obj = self._check_body(rt, ns, body)
        await self._check_namespace(rt, ns)
        generated = not objects.meta(obj).get("name") and objects.meta(obj).get("generateName")
        for attempt in range(3):
            # Admission changes the object in place; only a generated name may need another try.
            new = copy.deepcopy(obj) if generated else obj
            objects.init_create(rt, new, ns)
            rt.strategy.default_on_create(new, self._lookup)
            try:
                return await self._write(rt, ns, new, None, dry_run)
            except ApiError as e:
                if not (generated and e.reason == "AlreadyExists" and attempt < 2):
                    raise
        raise AssertionError("unreachable")

    def _lookup(self, group: str, kind: str, index: str, value: str) -> builtins.list[dict]:
        return self.cache.kind(by_kind(group, kind)).by_index(f"custom:{index}", value)

    async def update(self, rt: ResourceType, ns: str | None, name: str, body: Any, sub: str | None = None,
                     dry_run: bool = False) -> dict:
        body = self._check_body(rt, ns, body, name)
        old = await self.read(rt, ns, name)
        want = objects.meta(body).get("resourceVersion")
        if want and want != str(old.mod_revision):
            raise conflict(rt.plural, name, MODIFIED_MSG, rt.group)
        new = objects.init_update(rt, body, old.value, sub)
        return await self._write(rt, ns, new, old, dry_run)

    async def patch(self, rt: ResourceType, ns: str | None, name: str, content_type: str, body: bytes,
                    sub: str | None = None, dry_run: bool = False, view: Strategy | None = None) -> dict:
        """`view`: the patch is written against that view's form of the object (events.k8s.io's
        Events are stored as core ones)."""
        ptype = PATCH_TYPES.get(content_type.split(";")[0].strip())
        if ptype is None:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: {', '.join(PATCH_TYPES)}", "UnsupportedMediaType")
        doc = limits.decode_json(body or b"null", "the patch")
        for _ in range(5):
            old = await self.read(rt, ns, name)
            current = objects.with_rv(dict(old.value), old.mod_revision)
            base = objects.to_scale(rt, current) if sub == "scale" else current
            if view is not None:
                base = view.from_stored(base)
            try:
                if ptype == "merge":
                    patched = patch.merge_patch(base, doc)
                elif ptype == "json":
                    patched = patch.json_patch(base, doc)
                else:
                    patched = patch.strategic_merge_patch(base, doc, patch.NO_SPECIAL if sub == "scale"
                                                          else rt.strategy.merge_keys)
            except patch.PatchError as e:
                raise bad_request(str(e)) from None
            except patch.PatchConflict as e:
                raise ApiError(422, str(e), "Invalid", name=name, kind=rt.plural) from None
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not a JSON object")
            if view is not None:
                causes = Causes()  # the view's own update rules (events.k8s.io's immutable fields)
                view.validate(causes, patched, base, self.cfg)
                if causes:
                    raise invalid(rt.kind, name, causes.items, rt.group)
                patched = view.to_stored(patched)
            want = objects.meta(patched).get("resourceVersion")
            if want and want != str(old.mod_revision):
                raise conflict(rt.plural, name, MODIFIED_MSG, rt.group)
            if sub == "scale":
                new = self._apply_scale(rt, current, patched)
            else:
                self._check_body(rt, ns, patched, name)
                new = objects.init_update(rt, patched, old.value, sub)
            try:
                out = await self._write(rt, ns, new, old, dry_run)
            except ApiError as e:
                if e.code == 409 and e.reason == "Conflict" and not want:
                    continue  # raced with another writer: patches are retried on the fresh object
                raise
            return objects.to_scale(rt, out) if sub == "scale" else out
        raise conflict(rt.plural, name, MODIFIED_MSG, rt.group)

    def _apply_scale(self, rt: ResourceType, current: dict, scale: dict) -> dict:
        replicas = objects.get_path(scale, "spec", "replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid("Scale", objects.meta(current).get("name", ""), [
                {"reason": "FieldValueInvalid", "field": "spec.replicas",
                 "message": f"Invalid value: {replicas}: must be greater than or equal to 0"}], "autoscaling")
        new = dict(current)
        new["spec"] = dict(new.get("spec") or {}, replicas=replicas)
        return objects.init_update(rt, new, current, None)

    async def update_scale(self, rt: ResourceType, ns: str | None, name: str, body: Any, dry_run: bool) -> dict:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a Scale object")
        old = await self.read(rt, ns, name)
        want = objects.meta(body).get("resourceVersion")
        if want and want != str(old.mod_revision):
            raise conflict(rt.plural, name, MODIFIED_MSG, rt.group)
        new = self._apply_scale(rt, objects.with_rv(dict(old.value), old.mod_revision), body)
        return objects.to_scale(rt, await self._write(rt, ns, new, old, dry_run))

    async def _write(self, rt: ResourceType, ns: str | None, new: dict, old: KV | None, dry_run: bool) -> dict:
        """Admission + the compare-and-swap transaction, for create (old None) and update."""
        name = objects.meta(new).get("name", "")
        if rt.strategy.ranges(self.cfg):
            await self._ready()  # the allocators are current once the cache is
        with Reservation(self.allocators) as res:
            causes = admission.admit(rt, new, old.value if old else None, self.cfg, res)
            if causes:
                raise invalid(rt.kind, name, causes, rt.group)
            if old is not None and objects.strip_for_storage(new) == objects.strip_for_storage(old.value):
                return objects.with_rv(new, old.mod_revision)  # no change, no write (RV stays)
            if dry_run:
                return objects.with_rv(new, await self._dry_run(rt, ns, new, old))
            return objects.with_rv(new, await self.commit(rt, ns, new, old))

    # --- the primitives the lifecycle writes through too ------------------------------------------

    def _claims(self, rt: ResourceType, new: dict | None, old: KV | None) -> tuple[set, set]:
        """(claimed, released) (range, value) pairs of a change from `old` to `new` (None: deleted)."""
        have = rt.strategy.held(old.value if old else None)
        want = rt.strategy.held(new)
        return want - have, have - want

    def _allocated(self, claimed: set, released: set, revision: int) -> None:
        """The allocators learn a committed change at once (the watch brings it again later)."""
        for held, pairs in ((True, claimed), (False, released)):
            for name, value in pairs:
                self.allocators[name].apply(value, held, revision)

    async def commit(self, rt: ResourceType, ns: str | None, new: dict, old: KV | None) -> int:
        """Write `new` over `old` (None: it must not exist yet), with the allocation keys the
        change claims and releases, in one transaction; then the write hooks. The revision."""
        name = objects.meta(new).get("name", "")
        key = self.key(rt, ns, name)
        claimed, released = self._claims(rt, new, old)
        claims = {self.store.alloc_key(r, v): f"{ns}/{name}" for r, v in sorted(claimed)}
        expect = {key: old.mod_revision if old else 0, **dict.fromkeys(claims, 0)}
        ttl = rt.strategy.ttl(self.cfg)
        leases = {key: await self.leases.lease(ttl)} if ttl else None
        try:
            rev = await self.store.txn({key: objects.strip_for_storage(new), **claims},
                                       [self.store.alloc_key(r, v) for r, v in sorted(released)], expect, leases)
        except TxnFailed as e:
            self._raise_txn(rt, name, key, old, e)
            # Only allocation keys get here: another server took them meanwhile.
            ip_taken = any("/serviceips/" in k for k, v in e.existing.items() if v and k != key)
            raise invalid(rt.kind, name, [{"reason": "FieldValueInvalid",
                                           "field": "spec.clusterIP" if ip_taken else "spec.ports",
                                           "message": "provided value is already allocated"}], rt.group) from None
        self._allocated(claimed, released, rev)
        await self.notify(rt, ns, name, rev)
        return rev

    async def remove(self, rt: ResourceType, ns: str | None, kv: KV) -> None:
        """Delete `kv` if it is still current, releasing every allocation key it held."""
        name = objects.meta(kv.value).get("name", "")
        key = self.key(rt, ns, name)
        _, released = self._claims(rt, None, kv)
        try:
            rev = await self.store.txn({}, [key, *(self.store.alloc_key(r, v) for r, v in sorted(released))],
                                       {key: kv.mod_revision})
        except TxnFailed as e:
            self._raise_txn(rt, name, key, kv, e)
            raise
        self._allocated(set(), released, rev)
        await self.notify(rt, ns, name, rev)

    async def notify(self, rt: ResourceType, ns: str | None, name: str, revision: int) -> None:
        for hook in self.on_write:
            await hook(rt, ns, name, revision)

    async def _dry_run(self, rt: ResourceType, ns: str | None, new: dict, old: KV | None) -> int:
        """What `commit` would check, without writing: the object's revision and free claims."""
        name = objects.meta(new).get("name", "")
        key = self.key(rt, ns, name)
        claimed, _ = self._claims(rt, new, old)
        expect = {key: old.mod_revision if old else 0, **{self.store.alloc_key(r, v): 0 for r, v in claimed}}
        existing = {k: (kv.mod_revision if (kv := await self.store.get(k)) else 0) for k in expect}
        if existing != expect:
            self._raise_txn(rt, name, key, old, TxnFailed(existing))
            raise invalid(rt.kind, name, [{"reason": "FieldValueInvalid", "field": "spec",
                                           "message": "provided value is already allocated"}], rt.group)
        return old.mod_revision if old else 0

    def _cached_kv(self, rt: ResourceType, obj: dict) -> KV:
        meta = obj.get("metadata") or {}
        return KV(self.key(rt, meta.get("namespace"), meta.get("name", "")), b"", int(meta["resourceVersion"]),
                  value=obj)

    async def in_namespace(self, rt: ResourceType, ns: str) -> builtins.list[KV]:
        await self._cache_current(None)
        return [self._cached_kv(rt, obj) for obj in list(self.cache.kind(rt).by_ns.get(ns, {}).values())]

    async def dependents(self, ns: str, uid: str) -> builtins.list[tuple[ResourceType, KV]]:
        await self._cache_current(None)
        return [(rt, self._cached_kv(rt, obj)) for rt in RESOURCES if rt.namespaced
                for obj in self.cache.kind(rt).by_index(OWNER_INDEX, uid, ns)]

    @staticmethod
    def _raise_txn(rt: ResourceType, name: str, key: str, old: KV | None, e: TxnFailed) -> None:
        """The ApiError for a failed compare on the object's own key (returns if it was not that)."""
        if old is None and e.existing.get(key):
            raise already_exists(rt.plural, name, rt.group) from None
        if old is not None and e.existing.get(key) != old.mod_revision:
            if not e.existing.get(key):
                raise not_found(rt.plural, name, rt.group) from None
            raise conflict(rt.plural, name, MODIFIED_MSG, rt.group) from None
