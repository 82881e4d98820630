"""List + watch one kind into a local cache, with change callbacks and a `synced` signal.

    api = knet.kube.client.new_api_client(args.kubeconfig)
    services = Informer(api, Service, on_add=..., on_update=..., on_delete=...).start()
    if not services.wait_synced(60): ...        # do not program a partial view at start-up
    services.list(); services.get("web", "default")

Indexes (client-go's Indexers): named functions object -> values, registered at construction
(`indexers=`) or with `add_indexers`, kept up to date on every event, relist and malformed-object
removal. `by_index(name, value)` returns the objects filed under a value without touching the
rest of the cache; `knet.kube.indexes` has the standard ones (namespace, an EndpointSlice's
Service, a Pod's node). `list()` and `keys()` copy the whole cache: they count in `scans`, so a
test can assert that a component's event handling does none.

How it talks to the server: the client's generated list method with `_preload_content=False`
(for list and for `watch=true`), reading the raw JSON stream ourselves, rather than through
`kubernetes.watch.Watch`, because
  * Watch deserializes every event into the client's own models, whose validation raises on one
    malformed object and ends the whole stream; we validate each object with our models and skip
    only the bad one (logged by `knet.kube.models.parse`);
  * Watch silently retries once from its last resourceVersion on 410 and otherwise raises; we need
    the 410 to trigger a relist with a synthesized diff, and the bookmark / ERROR events visible;
  * we keep the open response so `stop()` can shut the socket down and unblock the read at once.

Protocol: LIST (paged, `limit`/`continue`) -> resourceVersion R -> WATCH from R with
allowWatchBookmarks; every event (bookmarks too) advances R. The watch ends when the server's
`timeoutSeconds` (jittered) expires -> re-watch from R. Connection errors / server restarts ->
exponential backoff with jitter, then re-watch from R; the backoff starts over after every
successful list and every watch the server accepts, and a refused connection (nothing listens:
the server is restarting) is retried at least every second, which costs the server nothing, so
an informer resumes within about a second of the API server's return. 410 Gone (as the response
status or as an ERROR event in the stream) -> relist and synthesize the difference: `on_delete`
for objects that vanished, `on_update` for changed ones (resourceVersion differs), `on_add` for
new ones.

Threads: the informer runs on its own daemon thread. Callbacks run on that thread, one at a time,
in event order, after the cache has been updated (a callback sees the new state through
get/list). Keep them short: record the change and wake the component's own worker, which is
what a threaded daemon wants. An asyncio daemon wraps its callbacks with `threadsafe(loop, fn)`
(runs fn on the loop) and awaits `wait_synced_async()`. An exception in a callback is logged and
does not stop the informer. get/list/keys are safe from any thread.

Malformed objects: skipped (never in the cache); an update that makes a cached object malformed
removes it and calls on_delete — the cache holds only objects as the server has them now.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from knet.kube.events import ADD, DELETE, UPDATE, Backoff, Event, lines, relist_diff
from knet.kube.indexes import NAMESPACE, IndexFunc, Store, by_namespace
from knet.kube.models import KubeObject, LabelSelector, model_for, object_key, parse
from knet.kube.resources import resource
from knet.kube.selectors import Selector, to_query

log = logging.getLogger("knet.kube.informer")

# The longest wait between attempts while connections are refused. A refused connect is answered
# by the kernel (nothing listens), so retrying it often loads no server; waiting the full
# exponential backoff there would leave an informer idle for many seconds after the API server is
# back (issue 17: 5-24 s).
REFUSED_RETRY_MAX = 1.0

M = TypeVar("M", bound=KubeObject)


class _Relist(Exception):
    """The watch cannot go on from our resourceVersion: 410 Gone, or another ERROR event after
    which our view may have a gap. Either way a relist is correct."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Handler:
    on_add: Callable[[Any], None] | None = None
    on_update: Callable[[Any, Any], None] | None = None
    on_delete: Callable[[Any], None] | None = None


class Informer(Generic[M]):
    def __init__(self, api_client: ApiClient, kind: type[M] | str, *, namespace: str | None = None,
                 label_selector: LabelSelector | Mapping[str, str] | str | None = None,
                 field_selector: str | None = None,
                 on_add: Callable[[M], None] | None = None,
                 on_update: Callable[[M, M], None] | None = None,
                 on_delete: Callable[[M], None] | None = None,
                 indexers: Mapping[str, IndexFunc] | None = None,
                 watch_timeout: int = 300, page_size: int | None = 500,
                 backoff: Backoff | None = None, name: str | None = None) -> None:
        self.api = api_client
        # model_for returns the class registered for `kind`, which is the M this informer serves.
        self.model: type[M] = model_for(kind)  # type: ignore[assignment]
        self.resource = resource(self.model)
        self.namespace = namespace
        self.label_selector = to_query(label_selector)
        self.field_selector = field_selector or None
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        # A copy: a Backoff has state, and a factory passes one template to all its informers.
        b = backoff or Backoff()
        self.backoff = Backoff(b.initial, b.maximum, b.factor, b.rng)  # errors from a reachable server
        self._refused = Backoff(min(b.initial, REFUSED_RETRY_MAX), min(b.maximum, REFUSED_RETRY_MAX), b.factor, b.rng)
        # A server that accepts and at once drops or expires us: reset only by a watch that works.
        self._churn = Backoff(b.initial, b.maximum, b.factor, b.rng)
        self.name = name or self._describe()
        self.synced = threading.Event()
        self._store: Store[M] = Store(indexers)
        self._lock = threading.Lock()  # guards _store (held briefly, never during callbacks)
        self.scans = 0  # list()/keys() calls: each copies the whole cache
        self._dispatch = threading.RLock()  # serializes callbacks and handler registration
        self._handlers: list[_Handler] = []
        self._rv: str | None = None
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        if on_add or on_update or on_delete:
            self._handlers.append(_Handler(on_add, on_update, on_delete))

    def _describe(self) -> str:
        parts = [self.resource.plural]
        if self.namespace:
            parts.append(f"ns={self.namespace}")
        if self.label_selector:
            parts.append(f"labels={self.label_selector}")
        if self.field_selector:
            parts.append(f"fields={self.field_selector}")
        return " ".join(parts)

    # --- public API ----------------------------------------------------------------------------

    def start(self) -> Informer[M]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"informer {self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; wait up to `timeout` seconds for the thread (0: do not wait)."""
        self._stop.set()
        self._shutdown_response()
        if timeout:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self.synced.wait(timeout)

    async def wait_synced_async(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.synced.wait, timeout)

    def add_handler(self, on_add: Callable[[M], None] | None = None, on_update: Callable[[M, M], None] | None = None,
                    on_delete: Callable[[M], None] | None = None) -> None:
        """Register callbacks. Objects already in the cache are replayed to `on_add` first (on the
        calling thread), so a late handler sees the same world as an early one."""
        handler = _Handler(on_add, on_update, on_delete)
        with self._dispatch:
            if on_add:
                with self._lock:
                    replay = list(self._store.objects.values())
                for obj in replay:
                    self._call(on_add, obj)
            self._handlers.append(handler)

    def add_indexers(self, indexers: Mapping[str, IndexFunc]) -> None:
        """Register more indexes (objects already cached are filed at once). Re-registering a
        name with the same function is a no-op, so parts of a process sharing an informer may
        each ask for the standard indexes; another function under a taken name: ValueError."""
        with self._lock:
            self._store.add_indexers(indexers)

    def by_index(self, index: str, value: str) -> list[M]:
        """The cached objects filed under `value` in `index` (KeyError for an unknown index)."""
        with self._lock:
            return self._store.objects_for(index, value)

    def index_keys(self, index: str, value: str) -> list[str]:
        with self._lock:
            return self._store.keys_for(index, value)

    def index_values(self, index: str) -> list[str]:
        """Every value of `index` that has at least one object."""
        with self._lock:
            return self._store.values(index)

    def get(self, name: str, namespace: str | None = None) -> M | None:
        with self._lock:
            return self._store.get(object_key(namespace, name))

    def get_by_key(self, key: str) -> M | None:
        with self._lock:
            return self._store.get(key)

    def list(self, namespace: str | None = None,
             selector: Selector | LabelSelector | Mapping[str, str] | None = None) -> list[M]:
        """Cached objects, optionally of one namespace and matching a selector (a dict is a map
        selector). With the namespace index registered, `namespace=` reads only that namespace;
        otherwise this copies the whole cache and counts in `scans`."""
        with self._lock:
            if namespace is not None and self._store.indexes(NAMESPACE, by_namespace):
                objs = self._store.objects_for(NAMESPACE, namespace)
                namespace = None
            else:
                self.scans += 1
                objs = list(self._store.objects.values())
        if namespace is not None:
            objs = [o for o in objs if o.metadata.namespace == namespace]
        if selector is not None:
            if not isinstance(selector, Selector):
                selector = (Selector.from_label_selector(selector) if isinstance(selector, LabelSelector)
                            else Selector.from_map(selector))
            objs = [o for o in objs if selector.matches(o.metadata.labels)]
        return objs

    def keys(self) -> builtins.list[str]:  # builtins: `list` is a method of this class
        with self._lock:
            self.scans += 1
            return list(self._store.objects)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store.objects)

    @property
    def resource_version(self) -> str | None:
        """The last resourceVersion seen (from a list, an event or a bookmark)."""
        return self._rv

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        last_list = -1e9
        while not self._stop.is_set():
            try:
                if need_list:
                    if time.monotonic() - last_list < 1.0:
                        # Relisting again right after a list: the server keeps expiring us. Back off.
                        self._sleep(self._churn.next())
                    self._list_and_replace()
                    last_list = time.monotonic()  # (a failed list waits out the error backoff instead)
                    need_list = False
                    continue
                started = time.monotonic()
                events = self._watch()
                # A watch that ended at once without an event is a server that accepts and drops
                # us: back off. A normal timeout or a productive stream: go on.
                if events == 0 and time.monotonic() - started < 1.0:
                    self._sleep(self._churn.next())
                else:
                    self._churn.reset()
            except _Relist as e:
                need_list = True
                if e.code == 410:
                    log.info("informer %s: resourceVersion %s expired, relisting", self.name, self._rv)
                else:
                    self._sleep(self._churn.next())
            except ApiException as e:
                if self._stop.is_set():
                    break
                if e.status == 410:
                    log.info("informer %s: 410 Gone at resourceVersion %s, relisting", self.name, self._rv)
                    need_list = True
                    continue
                delay = self.backoff.next()
                log.warning("informer %s: API error %s %s; retrying in %.1fs", self.name, e.status,
                            (e.reason or "").strip(), delay)
                self._sleep(delay)
            except Exception as e:  # connection refused/reset, timeouts, bad JSON: retry, never die
                if self._stop.is_set():
                    break
                delay = (self._refused if _refused(e) else self.backoff).next()
                log.warning("informer %s: %s: %s; retrying in %.1fs", self.name, type(e).__name__, e, delay)
                self._sleep(delay)
        log.debug("informer %s: stopped", self.name)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _reachable(self) -> None:
        """The server answered a list or accepted a watch: the next failure starts a new backoff."""
        self.backoff.reset()
        self._refused.reset()

    def _request(self, **kwargs: Any) -> Any:
        method = self.resource.method(self.api, "list", namespace=self.namespace)
        if self.namespace is not None and self.resource.namespaced:
            kwargs["namespace"] = self.namespace
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        resp = method(_preload_content=False, **kwargs)
        self._resp = resp
        if self._stop.is_set():  # stop() ran between the call and the assignment above
            self._shutdown_response()
        return resp

    def _list(self) -> tuple[builtins.list[dict[str, Any]], str | None]:
        items: builtins.list[dict[str, Any]] = []
        token: str | None = None
        paged = bool(self.page_size)
        while True:
            kwargs: dict[str, Any] = {"_request_timeout": (10, 120)}
            if paged:
                kwargs["limit"] = self.page_size
                if token:
                    kwargs["_continue"] = token
            try:
                resp = self._request(**kwargs)
                try:
                    body = json.loads(resp.data)
                finally:
                    self._resp = None
                    resp.release_conn()
            except ApiException as e:
                if e.status == 410 and token:
                    # The continue token expired between pages: start over without paging.
                    items, token, paged = [], None, False
                    continue
                raise
            if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
                raise ValueError(f"list response is not a List: {str(body)[:200]}")
            items += [i for i in body.get("items") or [] if isinstance(i, dict)]
            meta = body.get("metadata") or {}
            token = meta.get("continue") or None
            if not paged or not token:
                return items, meta.get("resourceVersion")

    def _list_and_replace(self) -> None:
        raw_items, rv = self._list()
        new: dict[str, M] = {}
        for raw in raw_items:
            obj = parse(self.model, raw)
            if obj is not None:
                new[obj.key] = obj
        with self._dispatch:
            with self._lock:
                old = self._store.replace(new)
            self._rv = rv
            self._reachable()
            events = relist_diff(old, new)
            for ev in events:
                self._fire(ev)
        first = not self.synced.is_set()
        self.synced.set()
        log.info("informer %s: %s %d objects at resourceVersion %s (%d changes)", self.name,
                 "listed" if first else "relisted", len(new), rv, len(events))

    def _watch(self) -> int:
        timeout = int(self.watch_timeout * (1 + random.random() / 2))
        resp = self._request(watch=True, resource_version=self._rv, allow_watch_bookmarks=True,
                             timeout_seconds=timeout, _request_timeout=(10, timeout + 30))
        self._reachable()
        count = 0
        try:
            for line in lines(resp):
                if self._stop.is_set():
                    break
                if not line.strip():
                    continue
                self._handle_watch_line(line)
                count += 1
        finally:
            self._resp = None
            resp.close()  # a watch connection is never reusable: do not return it to the pool
        return count

    def _handle_watch_line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            etype, raw = event["type"], event["object"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"bad watch event {line[:200]!r}") from e
        if etype == "ERROR":
            code = raw.get("code") if isinstance(raw, dict) else None
            if code != 410:
                log.warning("informer %s: watch error %s: %s; relisting", self.name, code,
                            raw.get("message") if isinstance(raw, dict) else raw)
            raise _Relist(code)
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        if not isinstance(meta, dict):
            # Well-formed JSON, but not an object we can key: skip it (raising would reconnect and
            # get the same event again, forever).
            log.warning("informer %s: %s event without metadata, skipped: %.200s", self.name, etype, line)
            return
        rv = meta.get("resourceVersion")
        if etype == "BOOKMARK":
            self._rv = rv or self._rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("informer %s: unknown watch event type %r", self.name, etype)
            return
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            log.warning("informer %s: %s event for an object without a name, skipped", self.name, etype)
        else:
            self._apply(etype, object_key(meta.get("namespace") if self.resource.namespaced else None, name), raw)
        self._rv = rv or self._rv

    def _apply(self, etype: str, key: str, raw: dict[str, Any]) -> None:
        with self._dispatch:
            if etype == "DELETED":
                with self._lock:
                    old = self._store.pop(key)
                if old is not None:
                    self._fire(Event(DELETE, old, None))
                return
            new = parse(self.model, raw)
            with self._lock:
                old = self._store.pop(key) if new is None else self._store.put(key, new)
            if new is None:
                if old is not None:
                    self._fire(Event(DELETE, old, None))
            elif old is None:
                self._fire(Event(ADD, None, new))
            else:
                self._fire(Event(UPDATE, old, new))

    def _fire(self, ev: Event[M]) -> None:
        for h in list(self._handlers):
            if ev.type == ADD and h.on_add:
                self._call(h.on_add, ev.new)
            elif ev.type == UPDATE and h.on_update:
                self._call(h.on_update, ev.old, ev.new)
            elif ev.type == DELETE and h.on_delete:
                self._call(h.on_delete, ev.old)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("informer %s: callback %s failed", self.name, getattr(fn, "__qualname__", fn))

    def _shutdown_response(self) -> None:
        resp = self._resp
        if resp is None:
            return
        try:
            resp.shutdown()  # urllib3 >= 2.3: unblocks a read in progress on another thread
        except Exception:
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _refused(err: BaseException) -> bool:
    """Was the connection refused? (urllib3 wraps it: MaxRetryError.reason -> NewConnectionError,
    whose cause is the ConnectionRefusedError.)"""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, ConnectionRefusedError):
            return True
        seen.add(id(e))
        reason = getattr(e, "reason", None)
        todo += [e.__cause__, e.__context__, reason if isinstance(reason, BaseException) else None]
    return False
