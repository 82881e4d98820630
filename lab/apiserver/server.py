"""The HTTP side: authentication, routing of Kubernetes API paths to the registry, content
negotiation (JSON or meta.k8s.io Table), watch streaming, Status errors.

Why aiohttp: a watch is a long-lived chunked response that waits on etcd for minutes; an asyncio
server holds hundreds of them without a thread each, streams each event as it comes, and cancels
the handler (and with it the etcd watch) when the client goes away. The standard library's
http.server would need a thread per watch and has no clean way to notice a vanished client; a
WSGI stack cannot stream without threads either. aiohttp is also the client side of the etcd
watch stream (storage.py), so one event loop does both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from knet import metrics
from lab.apiserver import auth, discovery, objects, tables, watchstream
from lab.apiserver.errors import ApiError, bad_request
from lab.apiserver.query import Query
from lab.apiserver.registry import Registry
from lab.apiserver.resources import ResourceType, by_kind, lookup
from lab.apiserver.storage import StoreError

log = logging.getLogger("lab.apiserver")

PUBLIC = ("/healthz", "/livez", "/readyz", "/version")
DEFAULT_WATCH_TIMEOUT = 1800  # kube-apiserver's --min-request-timeout
NOT_FOUND = "the server could not find the requested resource"


@dataclass
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None
    watch: bool


def parse_path(path: str) -> Target | tuple[str, ...]:
    """A resource path -> Target; a discovery path -> ("api",) / ("apis",) / ("group", g) /
    ("resources", g, v). Raises 404 for anything else."""
    segs = [s for s in path.strip("/").split("/") if s]
    if not segs or segs[0] not in ("api", "apis"):
        raise ApiError(404, NOT_FOUND)
    if segs[0] == "api":
        if len(segs) == 1:
            return ("api",)
        group, version, rest = "", segs[1], segs[2:]
    else:
        if len(segs) <= 2:
            return ("apis",) if len(segs) == 1 else ("group", segs[1])
        group, version, rest = segs[1], segs[2], segs[3:]
    if not rest:
        return ("resources", group, version)
    watch = rest[0] == "watch"
    if watch:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    rt = lookup(group, version, rest[0]) if rest else None
    if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
        raise ApiError(404, NOT_FOUND)
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in rt.subresources:
        raise ApiError(404, NOT_FOUND)
    return Target(rt, namespace, name, sub, watch)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


class ApiServer:
    def __init__(self, registry: Registry, tokens: dict[str, str], server_address: str = "",
                 metrics_registry: metrics.Registry | None = None) -> None:
        self.registry = registry
        self.tokens = tokens
        self.server_address = server_address
        self.metrics = metrics_registry or metrics.Registry()
        # kube-apiserver's names; durations leave out watches (they last as long as the client wants).
        self.requests = self.metrics.counter("apiserver_request_total", "requests by method and code",
                                             ["verb", "code"])
        self.durations = self.metrics.histogram("apiserver_request_duration_seconds", "time to answer a request",
                                                ["verb", "resource"])
        self.watchers = self.metrics.gauge("apiserver_registered_watchers", "open watches by resource",
                                           ["resource"])
        self.objects = self.metrics.gauge("apiserver_storage_objects", "objects stored, by resource",
                                          ["resource"])
        self.stopping = asyncio.Event()  # set on shutdown: open watches end cleanly
        self.app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.monotonic()
        user = "-"
        try:
            if not request.path.startswith(PUBLIC):
                found = auth.authenticate(self.tokens, request.headers.get("Authorization"))
                if found is None:
                    raise ApiError(401, "Unauthorized")
                user = found
            resp = await handler(request)
        except ApiError as e:
            resp = _json(e.status(), e.code)
        except StoreError as e:
            log.error("storage: %s", e)
            resp = _json(ApiError(503, f"storage unavailable: {e}", "ServiceUnavailable").status(), 503)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            log.exception("%s %s failed", request.method, request.path)
            resp = _json(ApiError(500, f"internal error: {e}", "InternalError").status(), 500)
        code = resp.status
        elapsed = time.monotonic() - t0
        self.requests.inc(1, request.method, str(code))
        if not request.get("watch"):
            self.durations.observe(elapsed, request.method, request.get("resource", ""))
        log.info("%s %s user=%s code=%d %.1fms", request.method, request.path_qs, user, code, elapsed * 1000)
        return resp

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(discovery.version())
        if path == "/metrics":
            return web.Response(text=self._metrics())
        if path == "/openapi/v2":
            if "protobuf" in request.headers.get("Accept", ""):
                # Not the Accept type itself: Go's mime parser rejects its "@" (kube-openapi sends this too).
                return web.Response(body=discovery.openapi_protobuf(), content_type="application/octet-stream")
            return _json(discovery.openapi_json())
        target = parse_path(path)
        if isinstance(target, tuple):
            return self._discovery(request, target)
        return await self._resource(request, target)

    def _discovery(self, request: web.Request, target: tuple[str, ...]) -> web.Response:
        if request.method != "GET":
            raise ApiError(405, f"the server does not allow this method on the requested resource: {request.method}")
        if target[0] == "api":
            return _json(discovery.api_versions(self.server_address or request.host))
        if target[0] == "apis":
            return _json(discovery.api_groups())
        doc = discovery.api_group(target[1]) if target[0] == "group" else discovery.resources(*target[1:])
        if doc is None:
            raise ApiError(404, NOT_FOUND)
        return _json(doc)

    async def _body(self, request: web.Request, required: bool = True) -> Any:
        raw = await request.read()
        if not raw.strip():
            if required:
                raise bad_request("the request body is empty")
            return None
        if "protobuf" in request.content_type or "yaml" in request.content_type:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: application/json (got {request.content_type})", "UnsupportedMediaType")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise bad_request(f"the body of the request could not be decoded as JSON: {e}") from None

    async def _resource(self, request: web.Request, t: Target) -> web.StreamResponse:
        request["resource"] = t.rt.plural
        q = request.query
        reg, rt, method = self.registry, t.rt, request.method
        if rt.verbs == ("create",):  # bindings: create only, and it binds the pod the body names
            if method != "POST" or t.name is not None:
                raise ApiError(405, f"the server does not allow this method on the requested resource: {method}",
                               "MethodNotAllowed")
            body = await self._body(request)
            name = objects.get_path(body, "metadata", "name")
            if not name:
                raise bad_request("a Binding needs metadata.name (the pod's name)")
            return _json(await reg.lifecycle.bind(by_kind("", "Pod"), t.namespace, name, body), 201)
        dry_run = q.get("dryRun") == "All"
        if method == "GET":
            if t.watch or q.get("watch") in ("1", "true", "True"):
                return await self._watch(request, t)
            if t.name is None:
                listed = await reg.list(rt, t.namespace, Query(rt, dict(q)))
                return self._maybe_table(request, rt, listed["items"], listed["metadata"], listed)
            obj = await reg.get(rt, t.namespace, t.name)
            if t.sub == "scale":
                return _json(objects.to_scale(rt, obj))
            if t.sub is None:
                return self._maybe_table(request, rt, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                         obj)
            return _json(obj)
        if method == "POST":
            if t.name is None:
                return _json(await reg.create(rt, t.namespace, await self._body(request), dry_run), 201)
            if t.sub == "binding":
                return _json(await reg.lifecycle.bind(rt, t.namespace, t.name, await self._body(request)), 201)
        elif method == "PUT" and t.name is not None:
            body = await self._body(request)
            if t.sub == "scale":
                return _json(await reg.update_scale(rt, t.namespace, t.name, body, dry_run))
            return _json(await reg.update(rt, t.namespace, t.name, body, t.sub, dry_run))
        elif method == "PATCH" and t.name is not None:
            return _json(await reg.patch(rt, t.namespace, t.name, request.headers.get("Content-Type", ""),
                                         await request.read(), t.sub, dry_run))
        elif method == "DELETE" and t.sub is None:
            options = await self._body(request, required=False) or {}
            if not isinstance(options, dict):
                raise bad_request("DeleteOptions must be a JSON object")
            if q.get("propagationPolicy"):
                options["propagationPolicy"] = q["propagationPolicy"]
            if q.get("gracePeriodSeconds"):
                try:
                    options["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
                except ValueError:
                    raise bad_request(f"gracePeriodSeconds: not an integer: {q['gracePeriodSeconds']!r}") from None
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            if t.name is None:
                return _json(await reg.lifecycle.delete_collection(rt, t.namespace, Query(rt, dict(q)), options,
                                                                   dry_run))
            return _json(await reg.lifecycle.delete(rt, t.namespace, t.name, options, dry_run))
        raise ApiError(405, f"the server does not allow this method on the requested resource: {method}",
                       "MethodNotAllowed")

    def _maybe_table(self, request: web.Request, rt: ResourceType, items: list[dict], meta: dict,
                     plain: dict) -> web.Response:
        version = tables.table_version(request.headers.get("Accept", ""))
        if version is None:
            return _json(plain)
        return _json(tables.table(rt, items, meta, request.query.get("includeObject", "Metadata"), version))

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        request["watch"] = True
        params = dict(request.query)
        if t.name is not None:  # the legacy /watch/.../<name> path: a watch of that one object
            params["fieldSelector"] = ",".join(filter(None, [params.get("fieldSelector"), f"metadata.name={t.name}"]))
        q = Query(t.rt, params)
        events = self.registry.watch(t.rt, t.namespace, q, self.stopping, watchstream.TICK)
        return await watchstream.serve(request, t.rt, events, q.timeout or DEFAULT_WATCH_TIMEOUT, int(q.rv or 0))

    def stop(self) -> None:
        """Shutdown: open watches end cleanly (a complete response), new ones end at once."""
        self.stopping.set()
        self.registry.cache.end_watchers()

    def _metrics(self) -> str:
        cache = self.registry.cache
        for resource, n in cache.watcher_counts.items():
            self.watchers.set(n, resource)
        for resource, n in cache.object_counts().items():
            self.objects.set(n, resource)
        return self.metrics.render()
