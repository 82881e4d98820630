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
import re
import ssl
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from knet import metrics
from lab.apiserver import (
    auth,
    discovery,
    limits,
    metricsapi,
    nodeproxy,
    objects,
    rbac,
    requestinfo,
    tables,
    watchstream,
)
from lab.apiserver.authorizer import AlwaysAllow, RbacAuthorizer
from lab.apiserver.direct import WatchItem
from lab.apiserver.errors import ApiError, bad_request, invalid
from lab.apiserver.query import Query
from lab.apiserver.registry import Registry
from lab.apiserver.resources import ResourceType, by_kind, lookup
from lab.apiserver.storage import StoreError
from lab.apiserver.strategy import Strategy
from lab.apiserver.validation import Causes

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


# The paths answered by the node agents (nodeproxy.py) rather than by storage.
_POD_SUB = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/(exec|attach|portforward|log)$")
_NODE_PROXY = re.compile(r"^/api/v1/nodes/([^/]+)/proxy(/.*)?$")
_METRICS = f"/apis/{metricsapi.GROUP_VERSION}"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


async def _converted(events: AsyncGenerator[WatchItem, None], view: Strategy) -> AsyncGenerator[WatchItem, None]:
    """A view's watch: its objects converted from the stored kind's (encoded again, per watcher)."""
    try:
        async for etype, obj, line in events:
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                yield etype, view.from_stored(obj), None
            else:
                yield etype, obj, line
    finally:
        await events.aclose()


class ApiServer:
    def __init__(self, registry: Registry, tokens: dict[str, auth.User], server_address: str = "",
                 metrics_registry: metrics.Registry | None = None, authorization_mode: str = "AlwaysAllow", *,
                 kubelet_tls: ssl.SSLContext | None = None) -> None:
        self.registry = registry
        self.tokens = tokens
        # As kube-apiserver: requests without a token are system:anonymous (then authorized like any
        # other: 403 unless a binding allows), except with AlwaysAllow, which turns anonymous off (401).
        self.authorizer = RbacAuthorizer(registry.cache) if authorization_mode == "RBAC" else AlwaysAllow()
        self.anonymous = authorization_mode != "AlwaysAllow"
        self.server_address = server_address
        self.node_proxy = nodeproxy.NodeProxy(self._get_object, kubelet_tls)
        self.metrics_api = metricsapi.MetricsApi(self._list_objects, self.node_proxy.get)
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
        self.app = web.Application(middlewares=[self._middleware], client_max_size=limits.MAX_REQUEST_BODY_BYTES)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.monotonic()
        user = "-"
        try:
            if not request.path.startswith(PUBLIC):
                found = self._authenticate(request)
                user = request["user"] = found.name
                if found.uid and found.uid != found.name:  # which credential (the lab's components share users)
                    user = f"{found.name} uid={found.uid}"
                self._authorize(request, found)
            resp = await handler(request)
        except ApiError as e:
            resp = _json(e.status(), e.code)
        except web.HTTPRequestEntityTooLarge:  # the body grew past client_max_size while being read
            resp = _json(limits.too_large().status(), 413)
        except StoreError as e:
            if "request is too large" in str(e):  # etcd's own limit (--max-request-bytes), below ours
                resp = _json(ApiError(413, f"Request entity too large: {e}", "RequestEntityTooLarge").status(), 413)
            else:
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

    def _authenticate(self, request: web.Request) -> auth.User:
        header = request.headers.get("Authorization")
        found = auth.authenticate(self.tokens, header)
        if found is not None:
            return found
        if header is None and self.anonymous:
            return auth.ANONYMOUS
        raise ApiError(401, "Unauthorized")

    def _authorize(self, request: web.Request, user: auth.User) -> None:
        attrs = requestinfo.attributes(request.method, request.path, request.query, user.name, user.groups)
        decision = self.authorizer.authorize(attrs)
        if not decision.allowed:
            raise rbac.forbidden(attrs, decision.reason)

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
        if (m := _POD_SUB.match(path)) is not None:
            request["resource"] = "pods"
            # A session (exec, attach, port-forward, a followed log) lasts as long as the user wants:
            # kept out of the request durations, as watches are (kube-apiserver's long-running requests).
            request["watch"] = m[3] in nodeproxy.UPGRADE_SUBRESOURCES or request.query.get("follow") in ("true", "1")
            return await self.node_proxy.pod(request, m[1], m[2], m[3])
        if (m := _NODE_PROXY.match(path)) is not None:
            return await self.node_proxy.node(request, m[1], m[2] or "/")
        if path == _METRICS or path.startswith(_METRICS + "/"):
            if path == _METRICS:
                return _json(metricsapi.resource_list())
            rest = [s for s in path[len(_METRICS):].split("/") if s]
            return _json(await self.metrics_api.handle(request.method, rest, dict(request.query)))
        target = parse_path(path)
        if isinstance(target, tuple):
            return self._discovery(request, target)
        return await self._resource(request, target)

    async def _get_object(self, kind: str, namespace: str | None, name: str) -> dict:
        return await self.registry.get(by_kind("", kind), namespace, name)

    async def _list_objects(self, kind: str, namespace: str | None, label_selector: str) -> list[dict]:
        rt = by_kind("", kind)
        params = {"labelSelector": label_selector} if label_selector else {}
        return (await self.registry.list(rt, namespace, Query(rt, params)))["items"]

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
        raw = await self._raw_body(request)
        if not raw.strip():
            if required:
                raise bad_request("the request body is empty")
            return None
        if "protobuf" in request.content_type or "yaml" in request.content_type:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: application/json (got {request.content_type})", "UnsupportedMediaType")
        return limits.decode_json(raw)

    @staticmethod
    async def _raw_body(request: web.Request) -> bytes:
        """The body, refused (413) from its Content-Length before it is read when that is over the
        limit (aiohttp's client_max_size stops a chunked one while it is read)."""
        if (request.content_length or 0) > limits.MAX_REQUEST_BODY_BYTES:
            raise limits.too_large()
        return await request.read()

    async def _resource(self, request: web.Request, t: Target) -> web.StreamResponse:
        request["resource"] = t.rt.plural
        if t.rt.strategy.stored_as is not None:
            return await self._view(request, t)
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
                                         await self._raw_body(request), t.sub, dry_run))
        elif method == "DELETE" and t.sub is None:
            options, dry_run = await self._delete_options(request, dry_run)
            if t.name is None:
                return _json(await reg.lifecycle.delete_collection(rt, t.namespace, Query(rt, dict(q)), options,
                                                                   dry_run))
            return _json(await reg.lifecycle.delete(rt, t.namespace, t.name, options, dry_run))
        raise ApiError(405, f"the server does not allow this method on the requested resource: {method}",
                       "MethodNotAllowed")

    async def _delete_options(self, request: web.Request, dry_run: bool) -> tuple[dict, bool]:
        """DeleteOptions from the body and the query; whether it is a dry run."""
        q = request.query
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
        return options, dry_run or "All" in (options.get("dryRun") or [])

    async def _view(self, request: web.Request, t: Target) -> web.StreamResponse:
        """A view of another kind's storage (events.k8s.io/v1 Events over the core ones): the
        request in the stored kind's terms, the answer converted back to the view's."""
        view, reg, method, q = t.rt.strategy, self.registry, request.method, request.query
        stored = by_kind(*view.stored_as or ("", ""))
        params = dict(q)
        if params.get("fieldSelector"):
            params["fieldSelector"] = view.stored_field_selector(params["fieldSelector"])
        dry_run = q.get("dryRun") == "All"
        if method == "GET" and t.sub is None:
            if t.watch or q.get("watch") in ("1", "true", "True"):
                return await self._watch(request, Target(stored, t.namespace, t.name, None, True), params, t.rt)
            if t.name is None:
                listed = await reg.list(stored, t.namespace, Query(stored, params))
                items = [view.from_stored(o) for o in listed["items"]]
                return self._maybe_table(request, t.rt, items, listed["metadata"],
                                         {**listed, "kind": f"{t.rt.kind}List", "apiVersion": t.rt.api_version,
                                          "items": items})
            obj = view.from_stored(await reg.get(stored, t.namespace, t.name))
            return self._maybe_table(request, t.rt, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                     obj)
        if method in ("POST", "PUT") and t.sub is None and (t.name is None) == (method == "POST"):
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request(f"the body of the request must be a {t.rt.kind} object")
            causes = Causes()  # the view's own rules; the stored kind's follow in the registry
            meta = body.get("metadata")
            if isinstance(meta, dict) and t.namespace and not meta.get("namespace"):
                meta["namespace"] = t.namespace  # as the request says (the view's checks compare it)
            current = None if method == "POST" else view.from_stored(await reg.get(stored, t.namespace, t.name))
            view.validate(causes, body, current, reg.cfg)
            if causes:
                raise invalid(t.rt.kind, objects.get_path(body, "metadata", "name") or "", causes.items, t.rt.group)
            if method == "POST":
                return _json(view.from_stored(await reg.create(stored, t.namespace, view.to_stored(body), dry_run)),
                             201)
            assert t.name is not None
            return _json(view.from_stored(await reg.update(stored, t.namespace, t.name, view.to_stored(body), None,
                                                           dry_run)))
        if method == "PATCH" and t.name is not None and t.sub is None:
            return _json(view.from_stored(await reg.patch(stored, t.namespace, t.name,
                                                          request.headers.get("Content-Type", ""),
                                                          await request.read(), None, dry_run, view)))
        if method == "DELETE" and t.sub is None:
            options, dry_run = await self._delete_options(request, dry_run)
            if t.name is None:
                return _json(await reg.lifecycle.delete_collection(stored, t.namespace, Query(stored, params), options,
                                                                   dry_run))
            gone = await reg.lifecycle.delete(stored, t.namespace, t.name, options, dry_run)
            return _json(view.from_stored(gone) if gone.get("kind") == stored.kind else gone)
        raise ApiError(405, f"the server does not allow this method on the requested resource: {method}",
                       "MethodNotAllowed")

    def _maybe_table(self, request: web.Request, rt: ResourceType, items: list[dict], meta: dict,
                     plain: dict) -> web.Response:
        version = tables.table_version(request.headers.get("Accept", ""))
        if version is None:
            return _json(plain)
        return _json(tables.table(rt, items, meta, request.query.get("includeObject", "Metadata"), version))

    async def _watch(self, request: web.Request, t: Target, params: dict[str, str] | None = None,
                     view: ResourceType | None = None) -> web.StreamResponse:
        """A watch of `t`; with `view`, of the kind it is stored as (`t`), converted to the view's."""
        request["watch"] = True
        params = dict(request.query) if params is None else params
        if t.name is not None:  # the legacy /watch/.../<name> path: a watch of that one object
            params["fieldSelector"] = ",".join(filter(None, [params.get("fieldSelector"), f"metadata.name={t.name}"]))
        q = Query(t.rt, params, watch=True)
        events = self.registry.watch(t.rt, t.namespace, q, self.stopping, watchstream.TICK)
        if view is not None:
            events = _converted(events, view.strategy)
        return await watchstream.serve(request, view or t.rt, events, q.timeout or DEFAULT_WATCH_TIMEOUT,
                                       int(q.rv or 0))

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
