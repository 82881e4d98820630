"""etcd v3 access for the lease manager, over etcd's gRPC gateway (JSON over HTTP) via etcd3gw.

etcd3gw gives us the transport (endpoint URL, API-version discovery: /v3/ on etcd >= 3.4, TLS,
errors) and its KV/lease calls. Its own watch helper hides the end of the stream, compaction and
the response header, all of which a resumable watch needs, so `watch()` reads the gateway's
watch stream itself through the same client session.

One Registry per thread: requests sessions are not meant to be shared across threads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ApiVersionDiscoveryFailedError,
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
)
from etcd3gw.utils import _decode, _encode, _increment_last_byte

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"


class EtcdUnavailable(RuntimeError):
    """No endpoint answered, or a stream broke: retry later."""


class RegistryError(RuntimeError):
    """etcd refused a request (a bug or a misconfiguration, not an outage)."""


class Compacted(RuntimeError):
    """The watch start revision was compacted away: list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    kind: str          # "put" or "delete"
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class Created:
    """The watch is established (etcd accepted it)."""


@dataclass(frozen=True)
class Progress:
    """Everything up to `revision` has been delivered (a progress notification)."""
    revision: int


def parse_endpoints(spec: str) -> list[tuple[str, str, int]]:
    """"http://a:2379,https://b:2379" -> [(protocol, host, port)]."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad etcd endpoint {item!r} (want http://host:port)")
        out.append((parts.scheme, parts.hostname, parts.port or 2379))
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class Registry:
    def __init__(self, endpoints: str, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0,
                 ca_cert: str | None = None, cert: str | None = None, key: str | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self._tls = {"ca_cert": ca_cert, "cert_cert": cert, "cert_key": key}
        self._current = 0
        self._client = self._make_client()

    @property
    def config_key(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        return f"{self.prefix}/subnets/"

    def subnet_key(self, name: str) -> str:
        return self.subnets_prefix + name

    @property
    def endpoint(self) -> str:
        protocol, host, port = self.endpoints[self._current]
        return f"{protocol}://{host}:{port}"

    def _make_client(self) -> Etcd3Client:
        protocol, host, port = self.endpoints[self._current]
        return Etcd3Client(host=host, port=port, protocol=protocol, timeout=self.timeout, **self._tls)

    def _failover(self) -> None:
        self._client.session.close()
        self._current = (self._current + 1) % len(self.endpoints)
        self._client = self._make_client()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One gateway call, trying each endpoint once before giving up."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            try:
                return self._client.post(self._client.get_url(path), json=body)
            except _OUTAGE as e:
                # etcd3gw maps connection errors, timeouts, 500s and 503s (no leader yet) here,
                # with the reason in detail_text.
                last = RuntimeError(e.detail_text or type(e).__name__)
            except Etcd3Exception as e:
                raise RegistryError(f"etcd refused {path}: {e.detail_text or e}") from None
            except requests.RequestException as e:
                last = e
            self._failover()
        raise EtcdUnavailable(f"etcd not reachable ({', '.join(self._all())}): {last}")

    def _all(self) -> list[str]:
        return [f"{p}://{h}:{port}" for p, h, port in self.endpoints]

    def close(self) -> None:
        self._client.session.close()

    # --- key/value ------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        result = self._post("/kv/range", {"key": _encode(key)})
        kvs = result.get("kvs") or []
        return _decode(kvs[0].get("value", "")) if kvs else None

    def get_config(self) -> bytes | None:
        return self.get(self.config_key)

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under the prefix and the store revision they were read at."""
        result = self._post("/kv/range", {"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))})
        revision = int(result["header"]["revision"])
        return [_kv(item) for item in result.get("kvs") or []], revision

    def list_subnets(self) -> tuple[list[KeyValue], int]:
        return self.list_prefix(self.subnets_prefix)

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _encode(key), "value": _encode(value)}
        if lease:
            body["lease"] = lease
        return int(self._post("/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> bool:
        return int(self._post("/kv/deleterange", {"key": _encode(key)}).get("deleted", 0)) > 0

    def create_if_absent(self, key: str, value: str, lease: int) -> bool:
        """Put the key only if it does not exist (race-free allocation)."""
        return self._txn(key, value, lease, {"target": "CREATE", "create_revision": 0})

    def replace_if_unchanged(self, key: str, value: str, lease: int, mod_revision: int) -> bool:
        """Rewrite the key only if nobody changed it since we read it at mod_revision."""
        return self._txn(key, value, lease, {"target": "MOD", "mod_revision": mod_revision})

    def _txn(self, key: str, value: str, lease: int, compare: dict[str, Any]) -> bool:
        put: dict[str, Any] = {"key": _encode(key), "value": _encode(value)}
        if lease:
            put["lease"] = lease
        txn = {"compare": [{"key": _encode(key), "result": "EQUAL", **compare}],
               "success": [{"request_put": put}], "failure": []}
        # JSON omits false booleans, so an absent "succeeded" means the compare failed.
        return bool(self._post("/kv/txn", txn).get("succeeded", False))

    # --- leases ---------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self._post("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew; the new TTL, or -1 if the lease no longer exists."""
        result = self._post("/lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self._post("/kv/lease/revoke", {"ID": lease})

    # --- watch ----------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int,
              idle_timeout: float = 30.0) -> Iterator[WatchEvent | Progress | Created]:
        """Events under the prefix from start_revision on, until the stream breaks.

        Raises EtcdUnavailable when the stream ends or cannot be opened, Compacted when etcd no
        longer has start_revision. A stream idle for idle_timeout seconds ends quietly (return),
        so a silently dead peer is noticed and the caller re-watches from its last revision.
        """
        create = {"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix)),
                  "start_revision": start_revision, "progress_notify": True}
        client = self._client
        try:
            resp = client.session.post(client.get_url("/watch"), json={"create_request": create}, stream=True,
                                        timeout=(self.timeout, idle_timeout))
        except requests.RequestException as e:
            self._failover()
            raise EtcdUnavailable(f"watch: cannot connect to {self.endpoint}: {e}") from None
        if resp.status_code != 200:
            resp.close()
            raise EtcdUnavailable(f"watch: HTTP {resp.status_code}: {resp.text[:200]}")
        buffer = b""
        try:
            for chunk in resp.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield from _watch_message(line)
        except requests.exceptions.ConnectionError as e:
            if "timed out" in str(e).lower():
                return
            raise EtcdUnavailable(f"watch stream broke: {e}") from None
        except requests.RequestException as e:
            raise EtcdUnavailable(f"watch stream broke: {e}") from None
        finally:
            resp.close()
        raise EtcdUnavailable("watch stream ended (etcd went away)")


_OUTAGE = (ConnectionFailedError, ConnectionTimeoutError, InternalServerError, ApiVersionDiscoveryFailedError)


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_decode(item["key"]).decode(), value=_decode(item.get("value", "")),
                    mod_revision=int(item.get("mod_revision", 0)), lease=int(item.get("lease", 0)))


def _watch_message(line: bytes) -> Iterator[WatchEvent | Progress | Created]:
    msg = json.loads(line)
    if "error" in msg:
        raise EtcdUnavailable(f"watch error from etcd: {msg['error']}")
    result = msg.get("result", {})
    compact = int(result.get("compact_revision", 0) or 0)
    if compact:
        raise Compacted(compact)
    if result.get("canceled"):
        raise EtcdUnavailable(f"watch canceled by etcd: {result.get('cancel_reason', '')}")
    if result.get("created"):
        yield Created()
    events = result.get("events") or []
    for ev in events:
        kv = ev["kv"]
        yield WatchEvent(kind="delete" if ev.get("type") == "DELETE" else "put",
                         key=_decode(kv["key"]).decode(), value=_decode(kv.get("value", "")),
                         revision=int(kv.get("mod_revision", 0)))
    if not events and not result.get("created") and "header" in result:
        yield Progress(int(result["header"]["revision"]))
