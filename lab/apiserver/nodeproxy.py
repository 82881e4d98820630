"""The subresources a node agent answers, proxied to it as kube-apiserver proxies to the kubelet:

    pods/exec, pods/attach, pods/portforward   (GET or POST with an Upgrade: WebSocket or SPDY/3.1)
    pods/log                                   (GET; `follow` streams)
    nodes/proxy/<path>                         (GET: /stats/summary, /metrics, /metrics/cadvisor)

The request becomes the kubelet's URL on the pod's node (its InternalIP, the port it announces in
status.daemonEndpoints) with the kubelet's parameter names (`input/output/error/tty`, `port`),
over HTTPS with the API server's kubelet-client certificate. An upgrade answered 101 by the agent
is answered 101 to the client too, and from then on the connection's bytes are spliced both ways
without looking at them (UpgradeAwareHandler): the agent speaks the streaming protocols.

Authorization happens before a request gets here, in the server's RBAC middleware, with the
attributes kube-apiserver asks for (requestinfo.py: `create` on pods/exec, pods/attach and
pods/portforward, also for a WebSocket's GET; `get` on pods/log; the method's verb on nodes/proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from lab.apiserver.errors import ApiError, bad_request

log = logging.getLogger("lab.apiserver.nodeproxy")
KUBELET_PORT = 10250
CONNECT_TIMEOUT = 10.0
UPGRADE_SUBRESOURCES = ("exec", "attach", "portforward")
POD_SUBRESOURCES = (*UPGRADE_SUBRESOURCES, "log")
# What the client's request may carry on to the agent (the rest is the API server's business).
FORWARDED = ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
             "x-stream-protocol-version", "accept", "user-agent")
# What the agent's upgrade answer carries back.
UPGRADE_ANSWER = ("upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol",
                  "x-stream-protocol-version", "x-accepted-stream-protocol-versions")
LOG_PARAMS = ("follow", "previous", "tailLines", "sinceSeconds", "sinceTime", "timestamps", "limitBytes")


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "true", "yes")


def _container(pod: dict[str, Any], requested: str, require_one: bool) -> str:
    """The container a request is for: the named one (it must exist), else the only one."""
    spec = pod.get("spec") or {}
    names = [c.get("name", "") for c in spec.get("containers") or []]
    name = pod.get("metadata", {}).get("name", "")
    if requested:
        others = [c.get("name", "") for c in (spec.get("initContainers") or []) + (spec.get("ephemeralContainers")
                                                                                  or [])]
        if requested not in names + others:
            raise bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    if len(names) == 1 or (names and not require_one):
        return names[0]
    raise bad_request(f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")


def kubelet_path(sub: str, pod: dict[str, Any], query: Mapping[str, str], multi: Mapping[str, Sequence[str]]) -> str:
    """The kubelet URL path and query for a pod subresource request (400 on what
    kube-apiserver's validation refuses)."""
    meta = pod.get("metadata") or {}
    ns, name = meta.get("namespace", "default"), meta.get("name", "")
    base = f"{urllib.parse.quote(ns)}/{urllib.parse.quote(name)}"
    params: list[tuple[str, str]] = []
    if sub in ("exec", "attach"):
        container = _container(pod, query.get("container", ""), require_one=True)
        flags = {"input": _flag(query, "stdin"), "output": _flag(query, "stdout"),
                 "error": _flag(query, "stderr"), "tty": _flag(query, "tty")}
        if not (flags["input"] or flags["output"] or flags["error"]):
            raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
        if sub == "exec":
            commands = list(multi.get("command", []))
            if not commands:
                raise bad_request("you must specify at least one command for the container")
            params += [("command", c) for c in commands]
        params += [(k, "1") for k, on in flags.items() if on]
        return f"/{sub}/{base}/{urllib.parse.quote(container)}?{urllib.parse.urlencode(params)}"
    if sub == "portforward":
        ports = [p.strip() for v in multi.get("ports", []) for p in v.split(",") if p.strip()]
        for p in ports:
            if not p.isdigit() or not 0 < int(p) < 65536:
                raise bad_request(f"invalid port {p!r}: must be between 1 and 65535")
        params += [("port", p) for p in ports]
        return f"/portForward/{base}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    if sub == "log":
        container = _container(pod, query.get("container", ""), require_one=True)
        params += [(k, query[k]) for k in LOG_PARAMS if query.get(k)]
        return f"/containerLogs/{base}/{urllib.parse.quote(container)}" + (
            f"?{urllib.parse.urlencode(params)}" if params else "")
    raise ApiError(404, "the server could not find the requested resource")


def node_address(node: dict[str, Any]) -> tuple[str, int]:
    """Where a node's agent listens: InternalIP (then ExternalIP, Hostname) and the kubelet port."""
    status = node.get("status") or {}
    by_type: dict[str, str] = {}
    for a in status.get("addresses") or []:
        by_type.setdefault(a.get("type", ""), a.get("address", ""))
    host = by_type.get("InternalIP") or by_type.get("ExternalIP") or by_type.get("Hostname")
    if not host:
        raise ApiError(503, f"node {node.get('metadata', {}).get('name')} has no address to reach it at",
                       "ServiceUnavailable")
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port") or KUBELET_PORT
    return host, int(port)


def client_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """TLS to the agents: our kubelet-client certificate; theirs is not verified (as
    kube-apiserver without --kubelet-certificate-authority)."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    return ctx


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"malformed status line {lines[0][:80]!r}")
    headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)]
    return int(parts[1]), headers


class _UpgradedResponse(web.StreamResponse):
    """The 101 with the agent's upgrade headers; after it the connection is the splice's."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        super().__init__(status=101, reason="Switching Protocols")
        for k, v in headers:
            self.headers.add(k, v)
        self.force_close()

    async def write_eof(self, data: bytes = b"") -> None:
        return None  # no HTTP framing after an upgrade


class _ToAgent:
    """Stands in for aiohttp's payload parser once the connection is upgraded: the client's bytes
    go to the agent as they arrive (reading pauses while the agent does not take them)."""

    HIGH = 256 * 1024

    def __init__(self, writer: asyncio.StreamWriter, client: asyncio.Transport) -> None:
        self.writer, self.client = writer, client
        self._resuming: asyncio.Task | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.writer.is_closing():
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() > self.HIGH and self._resuming is None:
                self.client.pause_reading()
                self._resuming = asyncio.ensure_future(self._resume())
        return False, b""

    async def _resume(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()
        self._resuming = None
        with contextlib.suppress(RuntimeError):
            self.client.resume_reading()

    def feed_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()


def _take_over(request: web.Request, sink: _ToAgent) -> None:
    """Route the client's further bytes to `sink`. aiohttp parses further requests on the
    connection unless it is "upgraded", which it decides only for `Upgrade: websocket`: a SPDY
    upgrade is marked so here (private state of aiohttp's RequestHandler, read the same way by
    its own WebSocketResponse; checked by the proxy's tests)."""
    proto = request.protocol
    for attr in ("_upgraded", "_upgrade"):
        if hasattr(proto, attr):
            setattr(proto, attr, True)
            break
    else:
        raise ApiError(501, "this aiohttp cannot hand over an upgraded connection", "NotImplemented")
    proto.set_parser(sink)  # type: ignore[arg-type]  # duck-typed: feed_data/feed_eof is all it calls


class NodeProxy:
    def __init__(self, get_object: Callable[[str, str | None, str], Awaitable[dict[str, Any]]],
                 tls: ssl.SSLContext | None) -> None:
        """`get_object(kind, namespace, name)`: the stored object (ApiError 404 if absent)."""
        self.get_object, self.tls = get_object, tls

    async def pod(self, request: web.Request, namespace: str, name: str, sub: str) -> web.StreamResponse:
        if sub in UPGRADE_SUBRESOURCES and request.method not in ("GET", "POST"):
            raise ApiError(405, f"the server does not allow this method on the requested resource: {request.method}",
                           "MethodNotAllowed")
        if sub == "log" and request.method != "GET":
            raise ApiError(405, f"the server does not allow this method on the requested resource: {request.method}",
                           "MethodNotAllowed")
        pod = await self.get_object("Pod", namespace, name)
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise bad_request(f"pod {name} does not have a host assigned")
        path = kubelet_path(sub, pod, request.query, {k: request.query.getall(k) for k in request.query})
        node = await self.get_object("Node", None, node_name)
        return await self.forward(request, node_address(node), path, streaming=sub == "log")

    async def node(self, request: web.Request, name: str, rest: str) -> web.StreamResponse:
        if request.method != "GET":
            raise ApiError(405, f"the server does not allow this method on the requested resource: {request.method}",
                           "MethodNotAllowed")
        node = await self.get_object("Node", None, name)
        path = "/" + rest.lstrip("/") + (f"?{request.query_string}" if request.query_string else "")
        return await self.forward(request, node_address(node), path, streaming=True)

    async def get(self, node: dict[str, Any], path: str) -> bytes:
        """The body of a GET to a node's agent (ApiError unless 200)."""
        if self.tls is None:
            raise ApiError(503, "no kubelet client certificate", "ServiceUnavailable")
        host, port = node_address(node)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self.tls, server_hostname=None, limit=1 << 20), CONNECT_TIMEOUT)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            status, _ = await read_head(reader)
            body = await reader.read()
            if status != 200:
                raise ApiError(502, f"node agent {host}:{port} answered {status} for {path}", "InternalError")
            return body
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def forward(self, request: web.Request, backend: tuple[str, int], path: str,
                      streaming: bool) -> web.StreamResponse:
        if self.tls is None:
            raise ApiError(503, "the API server has no kubelet client certificate (--kubelet-client-certificate)",
                           "ServiceUnavailable")
        host, port = backend
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=self.tls, server_hostname=None, limit=1 << 20),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise ApiError(502, f"error dialing backend: {e or 'timeout'} ({host}:{port})", "InternalError") from None
        try:
            headers = [(k, v) for k, v in request.headers.items() if k.lower() in FORWARDED]
            head = [f"{request.method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers)]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            status, answer = await asyncio.wait_for(read_head(reader), CONNECT_TIMEOUT * 3)
            if status == 101:
                return await self._splice(request, reader, writer, answer)
            return await self._relay(request, reader, status, answer, streaming)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, TimeoutError) as e:
            raise ApiError(502, f"error talking to the node agent at {host}:{port}: {e or 'timeout'}",
                           "InternalError") from None
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _relay(request: web.Request, reader: asyncio.StreamReader, status: int,
                     answer: list[tuple[str, str]], streaming: bool) -> web.StreamResponse:
        ctype = next((v for k, v in answer if k.lower() == "content-type"), "text/plain")
        length = next((v for k, v in answer if k.lower() == "content-length"), None)
        if status >= 300 or not streaming or length is not None:
            body = await (reader.readexactly(int(length)) if length and length.isdigit() else reader.read())
            return web.Response(status=status, body=body, headers={"Content-Type": ctype})
        resp = web.StreamResponse(status=status, headers={"Content-Type": ctype})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        while data := await reader.read(65536):
            await resp.write(data)
        await resp.write_eof()
        return resp

    @staticmethod
    async def _splice(request: web.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      answer: list[tuple[str, str]]) -> web.StreamResponse:
        if request.transport is None:
            raise ConnectionResetError("client gone")
        sink = _ToAgent(writer, request.transport)
        _take_over(request, sink)
        resp = _UpgradedResponse([(k, v) for k, v in answer if k.lower() in UPGRADE_ANSWER])
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            while data := await reader.read(65536):
                await resp.write(data)
        return resp
