"""The verbs over etcd: what kube-apiserver's generic registry does for every kind -- admission
on writes, optimistic concurrency by mod_revision, selectors on reads. Everything a kind does
differently comes from its strategy (`rt.strategy`, lab/apiserver/kinds/); deletion and its
cascades are the lifecycle's (lifecycle.py), which writes through `commit` and `remove` here.

Allocations (a Service's ClusterIP and nodePorts) are etcd keys (`<prefix>/ranges/serviceips/<ip>`,
`.../servicenodeports/<port>`) that the strategy says an object holds (`Strategy.held`); a write
claims the keys its change adds and releases those it drops in the same transaction as the
object, the claims with a must-not-exist compare: two Services can never hold one address, even
if two servers raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from lab.apiserver import admission, objects, patch
from lab.apiserver.allocator import Reservation, allocators_from
from lab.apiserver.errors import MODIFIED_MSG, ApiError, already_exists, bad_request, conflict, gone, invalid, not_found
from lab.apiserver.lifecycle import Lifecycle
from lab.apiserver.query import Query
from lab.apiserver.resources import RESOURCES, ResourceType, by_kind
from lab.apiserver.storage import KV, Compacted, Store, TxnFailed
from lab.apiserver.strategy import Config

log = logging.getLogger("lab.apiserver.registry")

PATCH_TYPES = {"application/merge-patch+json": "merge", "application/strategic-merge-patch+json": "strategic",
               "application/json-patch+json": "json"}
# Called after every committed write: (kind, namespace, name).
WriteHook = Callable[[ResourceType, str | None, str], Awaitable[None]]


class Registry:
    def __init__(self, store: Store, cfg: Config | None = None) -> None:
        self.store = store
        self.cfg = cfg or Config()
        self.spaces = {name: space for rt in RESOURCES for name, space in rt.strategy.ranges(self.cfg).items()}
        self._alloc_lock = asyncio.Lock()  # one allocation at a time here; etcd guards across processes
        self.on_write: list[WriteHook] = []
        self.lifecycle = Lifecycle(self, RESOURCES, by_kind("", "Namespace"))

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
        prefix = self.key(rt, ns)
        revision, start = None, None
        try:
            if q.cont:
                revision, start = objects.decode_continue(q.cont)
            elif q.rv and q.rv != "0" and q.rv_match == "Exact":
                revision = int(q.rv)
        except ValueError as e:
            raise bad_request(str(e)) from None
        items: list[dict] = []
        last_key, more = "", False
        batch = max(q.limit, 100) if q.limit else None
        try:
            while True:
                kvs, rev, more = await self.store.list(prefix, revision, batch, start)
                revision = revision or rev
                for i, kv in enumerate(kvs):
                    obj = objects.with_rv(kv.value, kv.mod_revision)
                    if q.matches(obj):
                        items.append(obj)
                        last_key = kv.key
                        if q.limit and len(items) >= q.limit:
                            more = more or i < len(kvs) - 1
                            break
                else:
                    if more and kvs:
                        start = kvs[-1].key + "\0"
                        continue
                break
        except Compacted:
            if q.cont:
                raise gone("The provided continue parameter is too old to display a consistent list result. "
                           "You can start a new list without the continue parameter.") from None
            raise gone(f"too old resource version: {q.rv}") from None
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if q.limit and more and items:
            meta["continue"] = objects.encode_continue(revision or 0, last_key + "\0")
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    async def watch(self, rt: ResourceType, ns: str | None, q: Query) -> AsyncIterator[tuple[str, Any]]:
        """(type, object) events; ("ERROR", Status) and the end when the start is compacted; and
        ("PROGRESS", revision) when the stream has got that far without anything for this client
        (the selectors filtered it out, or etcd reported progress): material for bookmarks."""
        prefix = self.key(rt, ns)
        if q.rv in (None, "0"):
            # No resourceVersion: the current state as ADDED events first, then changes.
            kvs, rev, _ = await self.store.list(prefix)
            for kv in kvs:
                obj = objects.with_rv(kv.value, kv.mod_revision)
                if q.matches(obj):
                    yield "ADDED", obj
            start = rev + 1
            yield "PROGRESS", rev
        else:
            try:
                start = int(q.rv) + 1
            except ValueError:
                raise bad_request(f"invalid resourceVersion {q.rv!r}") from None
        try:
            async with contextlib.aclosing(self.store.watch(prefix, start)) as stream:
                async for ev in stream:
                    if ev.type == "PROGRESS":
                        yield "PROGRESS", ev.revision
                        continue
                    new = objects.with_rv(ev.value, ev.revision) if ev.value is not None else None
                    prev = objects.with_rv(ev.prev, ev.revision) if ev.prev is not None else None
                    now_in, was_in = q.matches(new), q.matches(prev)
                    if now_in:
                        yield ("MODIFIED" if was_in else "ADDED"), new  # type: ignore[misc]
                    elif was_in:
                        yield "DELETED", new or prev  # type: ignore[misc]
                    else:
                        yield "PROGRESS", ev.revision
        except Compacted as e:
            yield "ERROR", gone(f"too old resource version: {q.rv} ({e.compact_revision})").status()

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
        if not rt.namespaced:
            return
        kv = await self.store.get(self.store.key("namespaces", None, ns or ""))
        if kv is None:
            raise not_found("namespaces", ns or "")
        if objects.get_path(kv.value, "status", "phase") == "Terminating":
            raise ApiError(403, f"{rt.plural} is forbidden: unable to create new content in namespace {ns} "
                                f"because it is being terminated", "Forbidden", kind=rt.plural)

    async def create(self, rt: ResourceType, ns: str | None, body: Any, dry_run: bool = False) -> dict:
        obj = self._check_body(rt, ns, body)
        await self._check_namespace(rt, ns)
        generated = not objects.meta(obj).get("name") and objects.meta(obj).get("generateName")
        for attempt in range(3):
            new = copy.deepcopy(obj)
            objects.init_create(rt, new, ns)
            try:
                return await self._write(rt, ns, new, None, dry_run)
            except ApiError as e:
                if not (generated and e.reason == "AlreadyExists" and attempt < 2):
                    raise
        raise AssertionError("unreachable")

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
                    sub: str | None = None, dry_run: bool = False) -> dict:
        ptype = PATCH_TYPES.get(content_type.split(";")[0].strip())
        if ptype is None:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: {', '.join(PATCH_TYPES)}", "UnsupportedMediaType")
        try:
            doc = json.loads(body or b"null")
        except ValueError as e:
            raise bad_request(f"the patch is not valid JSON: {e}") from None
        for _ in range(5):
            old = await self.read(rt, ns, name)
            current = objects.with_rv(dict(old.value), old.mod_revision)
            base = objects.to_scale(rt, current) if sub == "scale" else current
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
        async with self._reservation(rt) as res:
            causes = admission.admit(rt, new, old.value if old else None, self.cfg, res)
            if causes:
                raise invalid(rt.kind, name, causes, rt.group)
            if old is not None and objects.strip_for_storage(new) == objects.strip_for_storage(old.value):
                return objects.with_rv(new, old.mod_revision)  # no change, no write (RV stays)
            if dry_run:
                return objects.with_rv(new, await self._dry_run(rt, ns, new, old))
            return objects.with_rv(new, await self.commit(rt, ns, new, old))

    @contextlib.asynccontextmanager
    async def _reservation(self, rt: ResourceType) -> AsyncIterator[Reservation]:
        """What this write may allocate from: the kind's ranges with what the store holds now."""
        spaces = rt.strategy.ranges(self.cfg)
        if not spaces:
            yield Reservation({})
            return
        async with self._alloc_lock:
            held = {name: [k.rsplit("/", 1)[1] for k in await self.store.keys(self.store.alloc_key(name, ""))]
                    for name in spaces}
            with Reservation(allocators_from(spaces, held)) as res:
                yield res

    # --- the primitives the lifecycle writes through too ------------------------------------------

    def _allocation_keys(self, rt: ResourceType, ns: str | None, new: dict | None, old: KV | None,
                         ) -> tuple[dict[str, str], list[str]]:
        """(claims: key -> owner, releases) of a change from `old` to `new` (None: deleted)."""
        have = rt.strategy.held(old.value if old else None)
        want = rt.strategy.held(new)
        owner = f"{ns}/{objects.meta(new or (old.value if old else {})).get('name', '')}"
        claims = {self.store.alloc_key(r, v): owner for r, v in sorted(want - have)}
        return claims, [self.store.alloc_key(r, v) for r, v in sorted(have - want)]

    async def commit(self, rt: ResourceType, ns: str | None, new: dict, old: KV | None) -> int:
        """Write `new` over `old` (None: it must not exist yet), with the allocation keys the
        change claims and releases, in one transaction; then the write hooks. The revision."""
        name = objects.meta(new).get("name", "")
        key = self.key(rt, ns, name)
        claims, releases = self._allocation_keys(rt, ns, new, old)
        expect = {key: old.mod_revision if old else 0, **dict.fromkeys(claims, 0)}
        try:
            rev = await self.store.txn({key: objects.strip_for_storage(new), **claims}, releases, expect)
        except TxnFailed as e:
            self._raise_txn(rt, name, key, old, e)
            # Only allocation keys get here: another server took them meanwhile.
            ip_taken = any("/serviceips/" in k for k, v in e.existing.items() if v and k != key)
            raise invalid(rt.kind, name, [{"reason": "FieldValueInvalid",
                                           "field": "spec.clusterIP" if ip_taken else "spec.ports",
                                           "message": "provided value is already allocated"}], rt.group) from None
        await self.notify(rt, ns, name)
        return rev

    async def remove(self, rt: ResourceType, ns: str | None, kv: KV) -> None:
        """Delete `kv` if it is still current, releasing every allocation key it held."""
        name = objects.meta(kv.value).get("name", "")
        key = self.key(rt, ns, name)
        _, releases = self._allocation_keys(rt, ns, None, kv)
        try:
            await self.store.txn({}, [key, *releases], {key: kv.mod_revision})
        except TxnFailed as e:
            self._raise_txn(rt, name, key, kv, e)
        await self.notify(rt, ns, name)

    async def notify(self, rt: ResourceType, ns: str | None, name: str) -> None:
        for hook in self.on_write:
            await hook(rt, ns, name)

    async def _dry_run(self, rt: ResourceType, ns: str | None, new: dict, old: KV | None) -> int:
        """What `commit` would check, without writing: the object's revision and free claims."""
        name = objects.meta(new).get("name", "")
        key = self.key(rt, ns, name)
        claims, _ = self._allocation_keys(rt, ns, new, old)
        expect = {key: old.mod_revision if old else 0, **dict.fromkeys(claims, 0)}
        existing = {k: (kv.mod_revision if (kv := await self.store.get(k)) else 0) for k in expect}
        if existing != expect:
            self._raise_txn(rt, name, key, old, TxnFailed(existing))
            raise invalid(rt.kind, name, [{"reason": "FieldValueInvalid", "field": "spec",
                                           "message": "provided value is already allocated"}], rt.group)
        return old.mod_revision if old else 0

    async def in_namespace(self, rt: ResourceType, ns: str) -> list[KV]:
        kvs, _, _ = await self.store.list(self.key(rt, ns))
        return kvs

    async def dependents(self, ns: str, uid: str) -> list[tuple[ResourceType, KV]]:
        out = []
        for rt in RESOURCES:
            if rt.namespaced:
                out += [(rt, kv) for kv in await self.in_namespace(rt, ns) if uid in objects.owner_uids(kv.value)]
        return out

    @staticmethod
    def _raise_txn(rt: ResourceType, name: str, key: str, old: KV | None, e: TxnFailed) -> None:
        """The ApiError for a failed compare on the object's own key (returns if it was not that)."""
        if old is None and e.existing.get(key):
            raise already_exists(rt.plural, name, rt.group) from None
        if old is not None and e.existing.get(key) != old.mod_revision:
            if not e.existing.get(key):
                raise not_found(rt.plural, name, rt.group) from None
            raise conflict(rt.plural, name, MODIFIED_MSG, rt.group) from None
