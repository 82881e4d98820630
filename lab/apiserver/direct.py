"""Reads straight from etcd, for what the watch cache does not serve: lists with a `limit` or a
`continue` token or an exact resourceVersion (paged at a revision, as kube-apiserver does), and
watches from before the cache's window (etcd's own answer stands: 410 once compacted).

A selector's cheap pre-filter (`Query.raw_hints`) runs on the raw JSON, so only objects that
may match are decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from lab.apiserver import objects
from lab.apiserver.errors import bad_request, gone
from lab.apiserver.query import Query
from lab.apiserver.storage import KV, Compacted, Store

# Watch items: (type, object, encoded line or None); ("PROGRESS", revision, None) when the stream
# has got that far without anything for this client; ("ERROR", Status, None) before the end.
WatchItem = tuple[str, Any, bytes | None]


def _may_match(kv: KV, hints: list[bytes]) -> bool:
    return all(h in kv.raw for h in hints)


async def list_objects(store: Store, prefix: str, q: Query) -> tuple[list[dict], dict[str, Any]]:
    """(items, list metadata) of the objects under `prefix` that `q` selects."""
    revision, start = None, None
    try:
        if q.cont:
            revision, start = objects.decode_continue(q.cont)
        elif q.rv and q.rv != "0" and q.rv_match == "Exact":
            revision = int(q.rv)
    except ValueError as e:
        raise bad_request(str(e)) from None
    hints = q.raw_hints()
    items: list[dict] = []
    last_key, more = "", False
    batch = max(q.limit, 100) if q.limit else None
    try:
        while True:
            kvs, rev, more = await store.list(prefix, revision, batch, start)
            revision = revision or rev
            for i, kv in enumerate(kvs):
                if not _may_match(kv, hints):
                    continue
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
    return items, meta


async def watch_objects(store: Store, prefix: str, q: Query) -> AsyncGenerator[WatchItem, None]:
    """The objects under `prefix` that `q` selects, as watch events from `q.rv` on (no
    resourceVersion: the current ones as ADDED first)."""
    if q.rv in (None, "0"):
        kvs, rev, _ = await store.list(prefix)
        for kv in kvs:
            obj = objects.with_rv(kv.value, kv.mod_revision)
            if q.matches(obj):
                yield "ADDED", obj, None
        start = rev + 1
        yield "PROGRESS", rev, None
    else:
        start = int(q.rv) + 1
    try:
        async with contextlib.aclosing(store.watch(prefix, start)) as stream:
            async for ev in stream:
                if ev.type == "PROGRESS":
                    yield "PROGRESS", ev.revision, None
                    continue
                new = objects.with_rv(ev.value, ev.revision) if ev.value is not None else None
                prev = objects.with_rv(ev.prev, ev.revision) if ev.prev is not None else None
                now_in, was_in = q.matches(new), q.matches(prev)
                if now_in:
                    yield ("MODIFIED" if was_in else "ADDED"), new, None
                elif was_in:
                    yield "DELETED", new or prev, None
                else:
                    yield "PROGRESS", ev.revision, None
    except Compacted as e:
        yield "ERROR", gone(f"too old resource version: {q.rv} ({e.compact_revision})").status(), None


async def until_stopping(events: AsyncIterator[WatchItem], stopping: asyncio.Event,
                         tick: float) -> AsyncGenerator[WatchItem, None]:
    """The events, plus ("TICK", None, None) after `tick` seconds without one, until `stopping` is set:
    then the watch ends cleanly (a complete chunked response) instead of being cut."""
    stop = asyncio.ensure_future(stopping.wait())
    nxt: asyncio.Future | None = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({nxt, stop}, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                yield "TICK", None, None
                continue
            if not nxt.done():
                return  # stopping
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            nxt = None
            yield item
    finally:
        stop.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()  # and wait for it: the generator must not be running when it is closed
            with contextlib.suppress(BaseException):
                await nxt
