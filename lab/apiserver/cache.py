"""The watch cache (kube-apiserver's cacher, small): one etcd watch over the whole registry keeps
every object in memory, decoded once, with indexes, and fans each change out to the watches
clients hold. So what a request costs no longer grows with the store:

- a list with a selector reads an index (namespace; labels and fields the kind's strategy
  declares, e.g. EndpointSlices by `kubernetes.io/service-name`, Pods by `spec.nodeName`;
  ownerReferences by uid for cascades) and decodes nothing;
- a watch is a subscription: each change is decoded once, matched against each watcher of its
  namespace, and encoded once per event type for all the watchers that get it as plain JSON;
- the namespace check of a create, the Endpoints mirror and the cascades read memory;
- other keys under the prefix (the allocation keys of `ranges/`) go to `on_other`, which keeps
  the allocators' bitmaps current.

Consistency: the cache is behind etcd by the watch's latency. A read that must see every write
acknowledged before it (a list or watch without resourceVersion, as kube-apiserver's consistent
reads from cache) first asks etcd for its current revision (`fresh`) and waits until the cache
has got that far; a read of "any version at least R" waits for R (`wait_for`). A watch from a
resourceVersion older than the cache's window (or while the cache relists) is not served here:
the registry falls back to an etcd watch, which keeps etcd's answers (410 when compacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from knet.kube import selectors
from lab.apiserver.storage import KV, Compacted, Event, Store, StoreError

if TYPE_CHECKING:
    from lab.apiserver.query import Query
    from lab.apiserver.resources import ResourceType

log = logging.getLogger("lab.apiserver.cache")

WINDOW = 20000  # changes per kind kept for watches that resume from a resourceVersion
WATCHER_BACKLOG = 50000  # undelivered events after which a watcher is ended (its client re-watches)
LIST_PAGE = 5000
OWNER_INDEX = "owner"
INITIAL_END = "INITIAL_END"  # a streaming list's initial objects are all out (bookmarked by the stream)
# Callbacks for keys that are not objects: (key, raw value or None when deleted, revision), and a
# full listing of them at a revision (start and relist).
OtherChange = Callable[[str, bytes | None, int], None]
OtherReset = Callable[[list[KV], int], None]


class Change:
    """One change of one object, shared by every watcher that gets it."""

    __slots__ = ("_lines", "gone", "namespace", "new", "prev", "revision")

    def __init__(self, revision: int, namespace: str | None, new: dict | None, prev: dict | None) -> None:
        self.revision = revision
        self.namespace = namespace
        self.new = new  # None: deleted
        self.prev = prev  # as it was (None: created)
        # A deleted object as watchers see it: the last state, at the deletion's resourceVersion.
        self.gone = None if new is not None or prev is None else \
            dict(prev, metadata=dict(prev.get("metadata") or {}, resourceVersion=str(revision)))
        self._lines: dict[str, bytes] = {}

    def obj(self, etype: str) -> dict:
        if etype == "DELETED":
            return self.new or self.gone or {}
        return self.new or {}

    def line(self, etype: str) -> bytes:
        """The watch line for this change as `etype`, encoded once for every watcher."""
        out = self._lines.get(etype)
        if out is None:
            out = self._lines[etype] = json.dumps({"type": etype, "object": self.obj(etype)},
                                                  separators=(",", ":")).encode() + b"\n"
        return out


class Watcher:
    """One client watch of a kind: the changes that concern it, queued until its stream sends
    them. `events()` yields ("ADDED"|"MODIFIED"|"DELETED", object, encoded line)."""

    def __init__(self, kind: KindCache, namespace: str | None, q: Query, floor: int) -> None:
        self.kind = kind
        self.namespace = namespace
        self.q = q
        self.queue: deque[tuple[str, Change]] = deque()
        self.wake = asyncio.Event()
        self.ended = False
        self.floor = floor  # every change up to this revision that concerns the watcher is handed out
        self._holding = False  # a change is handed out and its successor not asked for yet

    def offer(self, ch: Change) -> None:
        if self.ended:
            return
        now_in = ch.new is not None and self.q.matches(ch.new)
        was_in = ch.prev is not None and self.q.matches(ch.prev)
        if now_in:
            self.queue.append(("MODIFIED" if was_in else "ADDED", ch))
        elif was_in:
            self.queue.append(("DELETED", ch))
        else:
            return
        if len(self.queue) > WATCHER_BACKLOG:
            log.warning("watch of %s ended: %d events not taken", self.kind.rt.plural, len(self.queue))
            self.end()
        self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()

    def progress(self) -> int:
        """The revision up to which this watcher has been handed everything that concerns it:
        once nothing waits, all the cache has dispatched (changes are dispatched to every
        watcher before the cache's revision moves)."""
        if self._holding or self.queue:
            return self.floor
        return max(self.floor, self.kind.cache.revision)

    async def events(self, tick: float) -> AsyncGenerator[tuple[str, Any, bytes | None], None]:
        """The changes, and ("TICK", None, None) after `tick` idle seconds, until ended."""
        try:
            while True:
                while self.queue:
                    etype, ch = self.queue.popleft()
                    if etype == INITIAL_END:
                        self.floor = max(self.floor, ch.revision)
                        yield INITIAL_END, ch.revision, None
                        continue
                    self._holding = True
                    yield etype, ch.obj(etype), ch.line(etype)
                    self._holding = False
                    # -1: another change of the same transaction may still be queued. A snapshot's
                    # ADDED events (revision 0) move nothing until all of them are out.
                    self.floor = max(self.floor, ch.revision - 1)
                if self.ended:
                    return
                self.wake.clear()
                try:
                    async with asyncio.timeout(tick):
                        await self.wake.wait()
                except TimeoutError:
                    yield "TICK", None, None
        finally:
            self.kind.unsubscribe(self)


class KindCache:
    """The objects of one kind: by etcd key, by namespace, by index value; recent changes."""

    def __init__(self, cache: WatchCache, rt: ResourceType) -> None:
        self.cache = cache
        self.rt = rt
        self.items: dict[str, dict] = {}
        self.by_ns: dict[str | None, dict[str, dict]] = {}
        self.index_names = (OWNER_INDEX, *(f"label:{k}" for k in rt.strategy.indexed_labels),
                            *(f"field:{p}" for p in rt.strategy.indexed_fields), "field:metadata.name",
                            *(f"custom:{n}" for n in rt.strategy.custom_indexes))
        self.indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self.index_names}
        self.window: deque[Change] = deque(maxlen=WINDOW)
        self.oldest = 0  # every change after this revision is in the window
        self.watchers: dict[str | None, set[Watcher]] = {}

    # --- the store ------------------------------------------------------------------------------

    def _index_values(self, name: str, obj: dict) -> Iterable[str]:
        meta = obj.get("metadata") or {}
        if name == OWNER_INDEX:
            return [r.get("uid", "") for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
        if name.startswith("label:"):
            labels = meta.get("labels") or {}
            key = name[6:]
            return [labels[key]] if key in labels else []
        if name.startswith("custom:"):
            return self.rt.strategy.index_values(name[7:], obj)
        return [selectors.field_value(obj, name[6:])]

    def put(self, key: str, obj: dict | None) -> dict | None:
        """Store (None: drop) the object under `key`; the one it replaces."""
        old = self.items.pop(key, None) if obj is None else self.items.get(key)
        if old is not None:
            ns = (old.get("metadata") or {}).get("namespace")
            self.by_ns.get(ns, {}).pop(key, None)
            for name in self.index_names:
                for v in self._index_values(name, old):
                    keys = self.indexes[name].get(v)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del self.indexes[name][v]
        if obj is not None:
            self.items[key] = obj
            ns = (obj.get("metadata") or {}).get("namespace")
            self.by_ns.setdefault(ns, {})[key] = obj
            for name in self.index_names:
                for v in self._index_values(name, obj):
                    self.indexes[name].setdefault(v, set()).add(key)
        return old

    def change(self, ch: Change) -> None:
        if len(self.window) == self.window.maxlen:
            self.oldest = self.window[0].revision
        self.window.append(ch)
        for ns in (None, ch.namespace) if ch.namespace is not None else (None,):
            for w in list(self.watchers.get(ns, ())):
                w.offer(ch)

    def reset(self, revision: int) -> None:
        self.items, self.by_ns = {}, {}
        self.indexes = {name: {} for name in self.index_names}
        self.window.clear()
        self.oldest = revision

    # --- reads ----------------------------------------------------------------------------------

    def get(self, key: str) -> dict | None:
        return self.items.get(key)

    def select(self, ns: str | None, q: Query) -> list[dict]:
        """The objects of `ns` (None: all) that `q` selects, in key order (as etcd lists them);
        the smallest index the query allows is read instead of everything."""
        if q.selects_nothing:
            return []
        pool: dict[str, dict] = self.items if ns is None else self.by_ns.get(ns, {})
        keys: Iterable[str] = pool.keys()
        size = len(pool)
        for name, values in q.indexable():
            if name == "field:metadata.namespace":
                if ns is None:
                    pool = self.by_ns.get(values[0], {})
                    if len(pool) < size:
                        keys, size = pool.keys(), len(pool)
                continue
            index = self.indexes.get(name)
            if index is None:
                continue
            found = set().union(*(index.get(v, ()) for v in values)) if len(values) > 1 else index.get(values[0], set())
            if len(found) < size:
                keys, size = found, len(found)
        out = [(k, obj) for k in keys if (obj := self.items.get(k)) is not None and (ns is None or (
            obj.get("metadata") or {}).get("namespace") == ns) and q.matches(obj)]
        out.sort(key=lambda kv: kv[0])
        return [obj for _, obj in out]

    def by_index(self, name: str, value: str, ns: str | None = None) -> list[dict]:
        keys = self.indexes.get(name, {}).get(value, ())
        return [o for k in sorted(keys) if (o := self.items.get(k)) is not None
                and (ns is None or (o.get("metadata") or {}).get("namespace") == ns)]

    # --- watchers -------------------------------------------------------------------------------

    def covers(self, revision: int) -> bool:
        """Whether every change of this kind after `revision` is in the window."""
        return revision >= self.oldest

    def subscribe(self, ns: str | None, q: Query, since: int | None, *, initial_end: bool = False) -> Watcher:
        """A watcher that gets every change after revision `since` (None: from now, with the
        current objects first as ADDED; `initial_end`: then an INITIAL_END at the snapshot's
        revision, for a streaming list's bookmark); nothing may be awaited between this and the
        caller's first read, so no change can slip between the replay and the subscription."""
        w = Watcher(self, ns, q, since or 0)
        if since is None:
            for obj in self.select(ns, q):  # through the indexes, as a list would
                w.queue.append(("ADDED", Change(0, ns, obj, None)))
            if initial_end:
                w.queue.append((INITIAL_END, Change(self.cache.revision, ns, None, None)))
            # Then everything after the snapshot: as if the client had listed at this revision.
            w.floor = 0 if w.queue else self.cache.revision
        else:
            later = []
            for ch in reversed(self.window):
                if ch.revision <= since:
                    break
                later.append(ch)
            for ch in reversed(later):
                if ns is None or ch.namespace == ns:
                    w.offer(ch)
        self.watchers.setdefault(ns, set()).add(w)
        self.cache.watchers_changed(self.rt, 1)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        group = self.watchers.get(w.namespace)
        if group is not None and w in group:
            group.discard(w)
            self.cache.watchers_changed(self.rt, -1)

    def end_watchers(self) -> None:
        for group in self.watchers.values():
            for w in list(group):
                w.end()


class WatchCache:
    def __init__(self, store: Store, kinds: Iterable[ResourceType], on_other: OtherChange | None = None,
                 on_other_reset: OtherReset | None = None) -> None:
        self.store = store
        self.kinds = {rt: KindCache(self, rt) for rt in kinds}
        self.on_other = on_other
        self.on_other_reset = on_other_reset
        self.revision = 0  # every change up to here is applied and dispatched
        self.ready = asyncio.Event()
        self.watcher_counts: dict[str, int] = {}
        self._by_base = {store.key(rt.plural, None): self.kinds[rt] for rt in self.kinds}
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._task: asyncio.Task | None = None

    # --- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._relist()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watch cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.end_watchers()

    async def _relist(self) -> None:
        prefix = self.store.prefix + "/"
        objects: list[KV] = []
        revision: int | None = None
        start: str | None = None
        while True:
            kvs, rev, more = await self.store.list(prefix, revision, LIST_PAGE, start)
            revision = revision or rev
            objects += kvs
            if not more or not kvs:
                break
            start = kvs[-1].key + "\0"
        assert revision is not None
        for kind in self.kinds.values():
            kind.reset(revision)
        others: list[KV] = []
        for kv in objects:
            owner, _ = self._kind_of(kv.key)
            if owner is None:
                others.append(kv)
                continue
            obj = self._decode(kv.key, kv.raw, kv.mod_revision)
            if obj is not None:
                owner.put(kv.key, obj)
        if self.on_other_reset is not None:
            self.on_other_reset(others, revision)
        self.revision = revision
        self._release_waiters()
        self.ready.set()
        log.info("watch cache: %d keys at revision %d", len(objects), revision)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                async for revision, events in self.store.watch_batches(self.store.prefix + "/", self.revision + 1,
                                                                        prev_kv=False):
                    for ev in events:
                        self._apply(ev)
                    self.revision = max(self.revision, revision)
                    self._release_waiters()
                    delay = 0.2
            except asyncio.CancelledError:
                raise
            except (StoreError, Compacted) as e:
                log.warning("watch cache: %s; relisting", e)
            except Exception:
                log.exception("watch cache failed; relisting")
            # Watchers would miss what happens until the relist: end them (their clients re-watch
            # from their last resourceVersion), and serve nothing from here meanwhile.
            self.ready.clear()
            self.end_watchers()
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await self._relist()
                    break
                except StoreError as e:
                    log.warning("watch cache: relist failed: %s", e)

    def _kind_of(self, key: str) -> tuple[KindCache | None, str | None]:
        """The kind a key belongs to and its namespace (None for cluster-scoped)."""
        rest = key[len(self.store.prefix) + 1:]
        parts = rest.split("/")
        for n in (2, 1):  # "services/specs/<ns>/<name>" before "pods/<ns>/<name>"
            kind = self._by_base.get(f"{self.store.prefix}/{'/'.join(parts[:n])}/")
            if kind is not None:
                tail = parts[n:]
                return kind, tail[0] if kind.rt.namespaced and len(tail) == 2 else None
        return None, None

    @staticmethod
    def _decode(key: str, raw: bytes, revision: int) -> dict | None:
        try:
            obj = json.loads(raw)
            obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
            return obj
        except (ValueError, AttributeError) as e:
            log.warning("watch cache: %s is not a JSON object, skipped: %s", key, e)
            return None

    def _apply(self, ev: Event) -> None:
        kind, ns = self._kind_of(ev.key)
        if kind is None:
            if self.on_other is not None:
                self.on_other(ev.key, ev.raw if ev.type == "PUT" else None, ev.revision)
            return
        new = self._decode(ev.key, ev.raw, ev.revision) if ev.type == "PUT" and ev.raw is not None else None
        prev = kind.put(ev.key, new)
        if new is None and prev is None:
            return
        kind.change(Change(ev.revision, ns, new, prev))

    # --- waiting for the store ------------------------------------------------------------------

    def _release_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.revision:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    async def wait_for(self, revision: int, timeout: float = 5.0) -> bool:
        """Until every change up to `revision` is in the cache; False on timeout or not ready."""
        if revision <= self.revision and self.ready.is_set():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (revision, self._seq, fut))
        try:
            async with asyncio.timeout(timeout):
                await fut
                await self.ready.wait()
        except TimeoutError:
            return False
        return True

    async def fresh(self, timeout: float = 5.0) -> bool:
        """Until the cache holds every write etcd acknowledged before this call."""
        return await self.wait_for(await self.store.revision(), timeout)

    # --- reads ----------------------------------------------------------------------------------

    def end_watchers(self) -> None:
        """End every watch served from here (server shutdown: each stream ends cleanly)."""
        for kind in self.kinds.values():
            kind.end_watchers()

    def kind(self, rt: ResourceType) -> KindCache:
        return self.kinds[rt]

    def get(self, rt: ResourceType, ns: str | None, name: str) -> dict | None:
        return self.kinds[rt].get(self.store.key(rt.plural, ns if rt.namespaced else None, name))

    def watchers_changed(self, rt: ResourceType, delta: int) -> None:
        self.watcher_counts[rt.plural] = self.watcher_counts.get(rt.plural, 0) + delta

    def object_counts(self) -> dict[str, int]:
        return {rt.plural: len(k.items) for rt, k in self.kinds.items()}
