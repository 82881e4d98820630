"""etcd access with kube-apiserver's conventions: objects as JSON under
`<prefix>/<resource>/<namespace>/<name>`, etcd's mod_revision as the object's resourceVersion,
the store revision as a list's resourceVersion, compare-and-swap transactions for updates.

Unary calls go through etcd3gw (the gRPC-gateway JSON client flannel_py uses too) in a worker
thread. Watches do not: etcd3gw's watch runs a thread per watch and drops the gateway's
"canceled, compact_revision" answer, which is exactly what a watch from a compacted
resourceVersion must turn into (410 Expired). So watches read the same gateway endpoint as an
async stream (aiohttp), which also cancels cleanly when the HTTP client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import etcd3gw
from etcd3gw import exceptions as etcd_exc

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


@dataclass
class KV:
    key: str
    value: dict
    mod_revision: int
    create_revision: int


@dataclass
class Event:
    type: str  # "PUT", "DELETE" or "PROGRESS" (no change; everything up to `revision` was sent)
    key: str
    value: dict | None  # the new value (PUT)
    prev: dict | None  # the value before (both types; None for a create)
    revision: int


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def _kv(item: dict) -> KV:
    return KV(_unb64(item["key"]), json.loads(base64.b64decode(item.get("value", "")) or b"{}"),
              int(item.get("mod_revision", 0)), int(item.get("create_revision", 0)))


def encode(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


class Store:
    def __init__(self, url: str, prefix: str = "/registry", timeout: float = 10.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or 2379}"
        self.prefix = "/" + prefix.strip("/")
        self.client = etcd3gw.client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                                     api_path="/v3/", timeout=timeout)
        self._session: aiohttp.ClientSession | None = None

    # --- keys -----------------------------------------------------------------------------------

    def key(self, plural: str, namespace: str | None, name: str = "") -> str:
        base = f"{self.prefix}/{ETCD_NAMES.get(plural, plural)}/"
        return base + (f"{namespace}/" if namespace else "") + name

    def alloc_key(self, what: str, value: object) -> str:
        return f"{self.prefix}/ranges/{what}/{value}"

    # --- unary calls ----------------------------------------------------------------------------

    async def _post(self, path: str, payload: dict) -> dict:
        def call() -> dict:
            try:
                return self.client.post(self.client.get_url(path), json=payload)
            except etcd_exc.Etcd3Exception as e:
                text = f"{e.detail_text or ''} {e}"
                if "compacted" in text:
                    raise Compacted(int(payload.get("revision", 0))) from None
                raise StoreError(f"etcd {path}: {text}") from None
            except Exception as e:  # requests' connection errors and the like
                raise StoreError(f"etcd {path}: {e}") from None
        return await asyncio.to_thread(call)

    async def range(self, key: str, range_end: str | None = None, revision: int | None = None,
                    limit: int | None = None) -> tuple[list[KV], int, bool]:
        payload: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            payload["range_end"] = _b64(range_end)
        if revision:
            payload["revision"] = revision
        if limit:
            payload["limit"] = limit
        resp = await self._post("/kv/range", payload)
        return [_kv(i) for i in resp.get("kvs", [])], int(resp["header"]["revision"]), bool(resp.get("more"))

    async def get(self, key: str) -> KV | None:
        kvs, _, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def list(self, prefix: str, revision: int | None = None, limit: int | None = None,
                   start: str | None = None) -> tuple[list[KV], int, bool]:
        """Objects under prefix (from key `start` on), at `revision` (None: now)."""
        return await self.range(start or prefix, _range_end(prefix), revision, limit)

    async def keys(self, prefix: str) -> list[str]:
        resp = await self._post("/kv/range", {"key": _b64(prefix), "range_end": _b64(_range_end(prefix)),
                                              "keys_only": True})
        return [_unb64(i["key"]) for i in resp.get("kvs", [])]

    async def revision(self) -> int:
        resp = await self._post("/kv/range", {"key": _b64(self.prefix + "/"), "count_only": True})
        return int(resp["header"]["revision"])

    async def txn(self, puts: dict[str, dict | str], deletes: list[str], expect: dict[str, int]) -> int:
        """Apply puts and deletes atomically if every key in `expect` has that mod_revision (0:
        absent); returns the new store revision, or raises TxnFailed with the keys' actual state."""
        compare = [{"key": _b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)}
                   for k, rev in expect.items()]
        success = [{"request_put": {"key": _b64(k), "value": _b64(v if isinstance(v, str) else encode(v))}}
                   for k, v in puts.items()]
        success += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        failure = [{"request_range": {"key": _b64(k), "keys_only": True}} for k in expect]
        resp = await self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure})
        if resp.get("succeeded"):
            return int(resp["header"]["revision"])
        existing = {k: 0 for k in expect}
        for r in resp.get("responses", []):
            for item in r.get("response_range", {}).get("kvs", []):
                existing[_unb64(item["key"])] = int(item.get("mod_revision", 0))
        raise TxnFailed(existing)

    async def compact(self, revision: int) -> None:
        await self._post("/kv/compaction", {"revision": revision, "physical": True})

    # --- watch ----------------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Events under prefix from start_revision on; raises Compacted if that is too old."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        # progress_notify: a quiet watch still learns, now and then, how far the store has got
        # (a PROGRESS event), which becomes a BOOKMARK for clients that asked for those.
        create = {"key": _b64(prefix), "range_end": _b64(_range_end(prefix)), "start_revision": start_revision,
                  "prev_kv": True, "progress_notify": True}
        try:
            resp = await self._session.post(f"{self.url}/v3/watch", json={"create_request": create})
        except aiohttp.ClientError as e:
            raise StoreError(f"etcd watch: {e}") from None
        async with resp:
            if resp.status != 200:
                raise StoreError(f"etcd watch: HTTP {resp.status}: {await resp.text()}")
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result") or {}
                    if result.get("compact_revision") and int(result["compact_revision"]):
                        raise Compacted(start_revision, int(result["compact_revision"]))
                    if result.get("canceled"):
                        raise StoreError(f"etcd watch canceled: {result.get('cancel_reason', '')}")
                    if not result.get("events"):
                        if not result.get("created") and result.get("header", {}).get("revision"):
                            yield Event("PROGRESS", "", None, None, int(result["header"]["revision"]))
                        continue
                    for ev in result["events"]:
                        yield _event(ev)
        raise StoreError("etcd watch stream ended")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.client.session.close)


def _event(ev: dict) -> Event:
    kv = ev["kv"]
    prev = ev.get("prev_kv")
    etype = ev.get("type", "PUT")
    value = json.loads(base64.b64decode(kv["value"])) if etype == "PUT" and kv.get("value") else None
    prev_value = json.loads(base64.b64decode(prev["value"])) if prev and prev.get("value") else None
    return Event(etype, _unb64(kv["key"]), value, prev_value, int(kv.get("mod_revision", 0)))
