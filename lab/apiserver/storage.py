"""etcd access with kube-apiserver's conventions: objects as JSON under
`<prefix>/<resource>/<namespace>/<name>`, etcd's mod_revision as the object's resourceVersion,
the store revision as a list's resourceVersion, compare-and-swap transactions for updates.

Every call goes to etcd's gRPC gateway (JSON over HTTP, the endpoint flannel_py's etcd3gw uses
too) on the server's event loop, never in a thread. Unary calls use `_Pool`, keep-alive
HTTP/1.1 connections that speak just what the gateway answers (a POST, a JSON answer with a
length or in chunks): a general client (aiohttp's, etcd3gw's requests) spent more per call than
the rest of a create. A watch is an aiohttp stream that cancels cleanly when its client goes
away and reports the gateway's "canceled, compact_revision" answer (what a watch from a
compacted resourceVersion must turn into: 410 Expired). Values are decoded lazily (`KV.value`),
so a list that filters raw bytes first (`KV.raw`) never decodes what it will not return.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
import ssl
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from knet.metrics import Histogram

# kube-apiserver's historical etcd key names where they differ from the plural.
ETCD_NAMES = {"services": "services/specs", "endpoints": "services/endpoints", "nodes": "minions",
              "replicationcontrollers": "controllers", "ingresses": "ingress"}


class StoreError(Exception):
    """etcd unreachable or answering an error (the server answers 503/500)."""


class Compacted(Exception):
    def __init__(self, revision: int, compact_revision: int = 0) -> None:
        super().__init__(f"required revision {revision} has been compacted (oldest {compact_revision})")
        self.revision = revision
        self.compact_revision = compact_revision


class TxnFailed(Exception):
    """A compare failed: `existing` maps each compared key to its current mod_revision (0 = absent)."""

    def __init__(self, existing: dict[str, int]) -> None:
        super().__init__(f"transaction compare failed: {existing}")
        self.existing = existing


class KV:
    """A stored key: its raw value (JSON bytes for objects), decoded on first use."""

    __slots__ = ("_value", "create_revision", "key", "mod_revision", "raw")

    def __init__(self, key: str, raw: bytes, mod_revision: int, create_revision: int = 0,
                 value: dict | None = None) -> None:
        self.key = key
        self.raw = raw
        self.mod_revision = mod_revision
        self.create_revision = create_revision
        self._value = value

    @property
    def value(self) -> dict:
        if self._value is None:
            self._value = json.loads(self.raw or b"{}")
        return self._value

    def __repr__(self) -> str:
        return f"KV({self.key!r}, rev={self.mod_revision})"


@dataclass
class Event:
    type: str  # "PUT", "DELETE" or "PROGRESS" (no change; everything up to `revision` was sent)
    key: str
    raw: bytes | None  # the new value (PUT)
    prev_raw: bytes | None  # the value before (when asked for; None for a create)
    revision: int
    _decoded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def value(self) -> dict | None:
        return self._decode("value", self.raw)

    @property
    def prev(self) -> dict | None:
        return self._decode("prev", self.prev_raw)

    def _decode(self, which: str, raw: bytes | None) -> dict | None:
        if raw is None:
            return None
        if which not in self._decoded:
            self._decoded[which] = json.loads(raw)
        return self._decoded[which]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def _kv(item: dict) -> KV:
    return KV(_unb64(item["key"]), base64.b64decode(item.get("value", "")), int(item.get("mod_revision", 0)),
              int(item.get("create_revision", 0)))


def encode(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


class _Pool:
    """Keep-alive HTTP/1.1 connections to one server, for POSTs of JSON bodies (at most `limit`
    at once; a connection that failed or was cut is dropped, never reused)."""

    def __init__(self, host: str, port: int, tls: bool, limit: int = 32) -> None:
        self.host, self.port = host, port
        self.tls = ssl.create_default_context() if tls else None
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(limit)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else \
                await asyncio.open_connection(self.host, self.port, ssl=self.tls)
            try:
                status, data, keep = await self._exchange(conn, path, body)
            except BaseException:
                conn[1].close()
                raise
            if keep:
                self._idle.append(conn)
            else:
                conn[1].close()
            return status, data

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str,
                        body: bytes) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % (path.encode(), self.host.encode(), len(body)) + body)
        head = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        parts = head[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ConnectionError(f"not an HTTP answer: {head[0][:100]!r}")
        headers: dict[bytes, bytes] = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            data = b"".join(chunks)
        else:
            data = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        return int(parts[1]), data, headers.get(b"connection", b"").lower() != b"close"

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class Store:
    def __init__(self, url: str, prefix: str = "/registry", timeout: float = 10.0,
                 durations: Histogram | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or 2379}"
        self.prefix = "/" + prefix.strip("/")
        self.timeout = timeout
        self.durations = durations  # etcd_request_duration_seconds{operation}
        self._pool = _Pool(parts.hostname or "127.0.0.1", parts.port or 2379, parts.scheme == "https")
        self._watches: aiohttp.ClientSession | None = None  # one long-lived connection per watch

    # --- keys -----------------------------------------------------------------------------------

    def key(self, plural: str, namespace: str | None, name: str = "") -> str:
        base = f"{self.prefix}/{ETCD_NAMES.get(plural, plural)}/"
        return base + (f"{namespace}/" if namespace else "") + name

    def alloc_key(self, what: str, value: object) -> str:
        return f"{self.prefix}/ranges/{what}/{value}"

    # --- unary calls ----------------------------------------------------------------------------

    async def _post(self, path: str, payload: dict, operation: str) -> dict:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self._pool.post(f"/v3{path}", json.dumps(payload).encode())
        except (OSError, EOFError, ValueError, TimeoutError, asyncio.LimitOverrunError) as e:  # refused, cut, garbled
            raise StoreError(f"etcd {path}: {type(e).__name__}: {e}") from None
        finally:
            if self.durations is not None:
                self.durations.observe(time.monotonic() - t0, operation)
        if status != 200:
            text = body.decode(errors="replace")
            if "compacted" in text:
                raise Compacted(int(payload.get("revision", 0)))
            raise StoreError(f"etcd {path}: HTTP {status}: {text[:300]}")
        return json.loads(body)

    async def range(self, key: str, end: str | None = None, revision: int | None = None,
                    limit: int | None = None, *, keys_only: bool = False) -> tuple[builtins.list[KV], int, bool]:
        payload: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            payload["range_end"] = _b64(end)
        if revision:
            payload["revision"] = revision
        if limit:
            payload["limit"] = limit
        if keys_only:
            payload["keys_only"] = True
        resp = await self._post("/kv/range", payload, "get" if end is None else "list")
        return [_kv(i) for i in resp.get("kvs", [])], int(resp["header"]["revision"]), bool(resp.get("more"))

    async def get(self, key: str) -> KV | None:
        kvs, _, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def list(self, prefix: str, revision: int | None = None, limit: int | None = None,
                   start: str | None = None) -> tuple[builtins.list[KV], int, bool]:
        """Objects under prefix (from key `start` on), at `revision` (None: now)."""
        return await self.range(start or prefix, range_end(prefix), revision, limit)

    async def keys(self, prefix: str) -> builtins.list[str]:
        kvs, _, _ = await self.range(prefix, range_end(prefix), keys_only=True)
        return [kv.key for kv in kvs]

    async def revision(self) -> int:
        """The store's current revision (one key looked up: as cheap as a call gets)."""
        resp = await self._post("/kv/range", {"key": _b64(self.prefix), "count_only": True}, "revision")
        return int(resp["header"]["revision"])

    async def check_not_compacted(self, revision: int) -> None:
        """Raise Compacted if `revision` is older than etcd's compaction point."""
        await self._post("/kv/range", {"key": _b64(self.prefix), "count_only": True, "revision": revision},
                         "revision")

    async def txn(self, puts: dict[str, dict | str], deletes: builtins.list[str], expect: dict[str, int],
                  leases: dict[str, int] | None = None) -> int:
        """Apply puts and deletes atomically if every key in `expect` has that mod_revision (0:
        absent); returns the new store revision, or raises TxnFailed with the keys' actual state.
        `leases`: keys put under an etcd lease (its id), which etcd deletes when the lease expires."""
        compare = [{"key": _b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)}
                   for k, rev in expect.items()]
        success = [{"request_put": {"key": _b64(k), "value": _b64(v if isinstance(v, str) else encode(v)),
                                    **({"lease": str(leases[k])} if leases and k in leases else {})}}
                   for k, v in puts.items()]
        success += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        failure = [{"request_range": {"key": _b64(k), "keys_only": True}} for k in expect]
        resp = await self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure}, "txn")
        if resp.get("succeeded"):
            return int(resp["header"]["revision"])
        existing = dict.fromkeys(expect, 0)
        for r in resp.get("responses", []):
            for item in r.get("response_range", {}).get("kvs", []):
                existing[_unb64(item["key"])] = int(item.get("mod_revision", 0))
        raise TxnFailed(existing)

    async def grant_lease(self, ttl: int) -> int:
        """A new etcd lease of `ttl` seconds; its id."""
        resp = await self._post("/lease/grant", {"TTL": str(ttl)}, "grant")
        return int(resp["ID"])

    async def compact(self, revision: int) -> None:
        await self._post("/kv/compaction", {"revision": revision, "physical": True}, "compact")

    # --- watch ----------------------------------------------------------------------------------

    async def watch_batches(self, prefix: str, start_revision: int, prev_kv: bool = True,
                            ) -> AsyncGenerator[tuple[int, builtins.list[Event]], None]:
        """(revision, events) as etcd sends them, from start_revision on: the events of one or
        more transactions, or none (progress: everything up to `revision` has been sent).
        Raises Compacted if start_revision is too old, StoreError when the stream breaks."""
        if self._watches is None or self._watches.closed:
            self._watches = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        # progress_notify: a quiet watch still learns, now and then, how far the store has got.
        create = {"key": _b64(prefix), "range_end": _b64(range_end(prefix)), "start_revision": start_revision,
                  "prev_kv": prev_kv, "progress_notify": True}
        try:
            resp = await self._watches.post(f"{self.url}/v3/watch", json={"create_request": create})
        except aiohttp.ClientError as e:
            raise StoreError(f"etcd watch: {e}") from None
        async with resp:
            if resp.status != 200:
                raise StoreError(f"etcd watch: HTTP {resp.status}: {await resp.text()}")
            buf = b""
            try:
                # Not line iteration: one message may exceed aiohttp's line limit (a burst of events).
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        batch = _batch(line, start_revision)
                        if batch is not None:
                            yield batch
            except (aiohttp.ClientError, ValueError) as e:
                raise StoreError(f"etcd watch: {type(e).__name__}: {e}") from None
        raise StoreError("etcd watch stream ended")

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[Event, None]:
        """Events under prefix from start_revision on, each with its previous value, and
        PROGRESS events; raises Compacted if start_revision is too old."""
        async for revision, events in self.watch_batches(prefix, start_revision):
            if not events:
                yield Event("PROGRESS", "", None, None, revision)
            for ev in events:
                yield ev

    async def close(self) -> None:
        self._pool.close()
        if self._watches is not None:
            await self._watches.close()


def _batch(line: bytes, start_revision: int) -> tuple[int, list[Event]] | None:
    """One message of the gateway's watch stream: (revision, events), None for nothing to report."""
    if not line.strip():
        return None
    result = json.loads(line).get("result") or {}
    if result.get("compact_revision") and int(result["compact_revision"]):
        raise Compacted(start_revision, int(result["compact_revision"]))
    if result.get("canceled"):
        raise StoreError(f"etcd watch canceled: {result.get('cancel_reason', '')}")
    if result.get("created") and not result.get("events"):
        return None
    return int(result.get("header", {}).get("revision", 0)), [_event(ev) for ev in result.get("events") or []]


def _event(ev: dict) -> Event:
    kv = ev["kv"]
    prev = ev.get("prev_kv")
    etype = ev.get("type", "PUT")
    raw = base64.b64decode(kv["value"]) if etype == "PUT" and kv.get("value") else None
    prev_raw = base64.b64decode(prev["value"]) if prev and prev.get("value") else None
    return Event(etype, _unb64(kv["key"]), raw, prev_raw, int(kv.get("mod_revision", 0)))
