"""One watch response: registry events -> JSON lines on a chunked HTTP response, with Table
rendering for kubectl, BOOKMARK events for clients that allow them, a clean end on timeout or
server shutdown, and errors reported in-band once the stream has started (as kube-apiserver does).
A plain JSON watch writes the line the watch cache encoded once for all its watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiohttp import web

from lab.apiserver import tables
from lab.apiserver.cache import INITIAL_END
from lab.apiserver.direct import WatchItem
from lab.apiserver.errors import ApiError
from lab.apiserver.resources import ResourceType
from lab.apiserver.storage import StoreError

log = logging.getLogger("lab.apiserver")

BOOKMARK_INTERVAL = 60.0  # kube-apiserver sends a bookmark about once a minute
INITIAL_EVENTS_END = "k8s.io/initial-events-end"  # client-go's watch-list waits for this bookmark
TICK = 10.0  # an idle watch wakes this often to see whether a bookmark is due


class WatchStream:
    def __init__(self, resp: web.StreamResponse, rt: ResourceType, client_rv: int, bookmarks: bool,
                 table_version: str | None, include: str) -> None:
        self.resp, self.rt = resp, rt
        self.bookmarks = bookmarks
        self.table_version, self.include = table_version, include
        self.progress = self.sent = client_rv  # revision reached / last told to the client
        self.progress_source: Callable[[], int] | None = None  # the watch cache's view of the former
        self.first = True
        self.last_bookmark = time.monotonic()

    async def _line(self, etype: str, obj: Any) -> None:
        await self.resp.write(json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n")

    async def event(self, etype: str, obj: Any, line: bytes | None = None) -> None:
        if etype == "PROGRESS":
            self.progress = max(self.progress, obj)
            return
        if etype == "PROGRESS_SOURCE":
            self.progress_source = obj
            return
        if etype == INITIAL_END:  # a streaming list's initial objects are out: say so, at their revision
            self.progress = self.sent = max(self.progress, obj)
            if self.bookmarks:
                await self._line("BOOKMARK", {"kind": self.rt.kind, "apiVersion": self.rt.api_version,
                                              "metadata": {"resourceVersion": str(obj),
                                                           "annotations": {INITIAL_EVENTS_END: "true"}}})
            return
        if etype == "TICK":
            if time.monotonic() - self.last_bookmark >= BOOKMARK_INTERVAL:
                await self.bookmark()
            return
        if etype != "ERROR":
            rv = int(obj["metadata"].get("resourceVersion") or 0)
            self.progress = self.sent = max(self.progress, rv)
            if self.table_version is not None:
                obj = tables.table(self.rt, [obj], {"resourceVersion": str(rv)}, self.include, self.table_version,
                                   with_columns=self.first)
                self.first, line = False, None
        if line is not None:
            await self.resp.write(line)
        else:
            await self._line(etype, obj)

    async def bookmark(self) -> None:
        """Tell the client how far the stream has got, if that is further than it knows."""
        self.last_bookmark = time.monotonic()
        if self.progress_source is not None:
            self.progress = max(self.progress, self.progress_source())
        if not self.bookmarks or self.progress <= self.sent:
            return
        self.sent = self.progress
        await self._line("BOOKMARK", {"kind": self.rt.kind, "apiVersion": self.rt.api_version,
                                      "metadata": {"resourceVersion": str(self.progress)}})

    async def error(self, path: str, e: Exception) -> None:
        if isinstance(e, StoreError):
            log.error("watch %s: %s", path, e)
        else:
            log.exception("watch %s failed", path)
        await self._line("ERROR", ApiError(500, f"watch of {self.rt.plural} failed: {e}", "InternalError").status())


async def serve(request: web.Request, rt: ResourceType, events: AsyncGenerator[WatchItem, None], timeout: float,
                client_rv: int) -> web.StreamResponse:
    """Stream `events` (which end when the server stops, and bring a TICK now and then while
    idle) until the client's timeout."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    q = request.query
    out = WatchStream(resp, rt, client_rv, q.get("allowWatchBookmarks") in ("1", "true", "True"),
                      tables.table_version(request.headers.get("Accept", "")), q.get("includeObject", "Metadata"))
    try:
        with contextlib.suppress(ConnectionResetError):
            try:
                async with asyncio.timeout(timeout):
                    async for etype, obj, line in events:
                        await out.event(etype, obj, line)
                        if etype == "ERROR":
                            break
                await out.bookmark()  # the server ended the stream: where to resume from
            except TimeoutError:
                await out.bookmark()  # timeoutSeconds elapsed: the client re-watches from here
            except Exception as e:
                await out.error(request.path, e)
    finally:
        await events.aclose()  # explicitly: `async for` does not close generators
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp
