"""The node agent's API on :10250, the kubelet's paths, HTTPS with client certificates (only the
API server's kubelet-client identity is let in, as a kubelet with --client-ca-file and webhook
authorization for the API server would):

    GET|POST /exec/<ns>/<pod>[/<uid>]/<container>?command=..&input=1&output=1&error=1&tty=1
    GET|POST /attach/<ns>/<pod>[/<uid>]/<container>?input=1&output=1&error=1&tty=1
    GET|POST /portForward/<ns>/<pod>[/<uid>][?port=N...]
    GET      /containerLogs/<ns>/<pod>/<container>?follow=&previous=&tailLines=&sinceSeconds=&timestamps=
    GET      /stats/summary   /metrics   /metrics/cadvisor   /healthz

Streaming requests upgrade to WebSocket (v5/v4/v1 channel protocols; port-forward also
`SPDY/3.1+portforward.k8s.io`) or to SPDY/3.1 (X-Stream-Protocol-Version). It runs its own event
loop in a thread of the agent; what it knows of pods comes from the agent through `Pods`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol

from knet.kube.streams import channels, spdy, websocket
from lab.agent.nodeapi import http1, logs, portforward, remotecommand
from lab.agent.nodeapi.conns import SpdyConn, TcpBytes, WsBytes, WsConn
from lab.agent.nodeapi.http1 import BadRequest, Request
from lab.agent.nodeapi.remotecommand import AttachTarget, ExecTarget, Options

log = logging.getLogger("lab.agent.nodeapi")
KUBELET_PORT = 10250
CLIENT_NAMES = frozenset({"kube-apiserver-kubelet-client"})
CLIENT_GROUPS = frozenset({"system:masters"})


class NotFound(Exception):
    pass


class Conflict(Exception):
    """The object exists but cannot do it now (a container that is not running)."""


class PodView(Protocol):
    """What the API needs of one pod the agent runs."""
    name: str
    namespace: str
    uid: str
    pod_netns: str

    def container_names(self) -> list[str]: ...
    def exec_target(self, container: str) -> ExecTarget: ...        # Conflict if not running
    def attach_target(self, container: str) -> AttachTarget: ...    # Conflict if not running
    def log_file(self, container: str, previous: bool) -> str: ...  # NotFound: no such instance
    def running(self, container: str) -> bool: ...


class Pods(Protocol):
    def find(self, namespace: str, name: str) -> PodView | None: ...


def client_allowed(peercert: dict[str, Any] | None) -> bool:
    """The API server's kubelet-client certificate: CN kube-apiserver-kubelet-client or
    O system:masters (the CA was checked by TLS already)."""
    if not peercert:
        return False
    subject = [attr for rdn in peercert.get("subject", ()) for attr in rdn]
    names = {v for k, v in subject if k == "commonName"}
    groups = {v for k, v in subject if k == "organizationName"}
    return bool(names & CLIENT_NAMES or groups & CLIENT_GROUPS)


def tls_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class NodeApi:
    def __init__(self, pods: Pods, summary: Callable[[], dict[str, Any]], metrics: Callable[[], str],
                 cadvisor: Callable[[], str]) -> None:
        self.pods, self.summary, self.metrics, self.cadvisor = pods, summary, metrics, cadvisor
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        """Serve on a listening socket from a thread of its own (tls None: plain HTTP, tests)."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(sock, tls)), name="node-api",
                                        daemon=True)
        self._thread.start()
        self.ready.wait(10)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)

    async def _main(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=sock, ssl=tls, limit=http1.MAX_HEAD)
        self.ready.set()
        async with server:
            await self._stop.wait()

    # --- one request per connection --------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = None
        try:
            tls = writer.get_extra_info("sslcontext") is not None
            if tls and not client_allowed(writer.get_extra_info("peercert")):
                writer.write(http1.status_response(403, "Forbidden: only the API server's kubelet client is allowed"))
                return
            req = await http1.read_request(reader)
            if req is not None:
                await self._route(req, reader, writer)
        except BadRequest as e:
            writer.write(http1.status_response(400, str(e)))
        except NotFound as e:
            writer.write(http1.status_response(404, str(e)))
        except Conflict as e:
            writer.write(http1.status_response(400, str(e)))
        except (_Answered, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception as e:
            log.exception("node API: %s %s failed", req.method if req else "?", req.target if req else "?")
            with contextlib.suppress(Exception):
                writer.write(http1.status_response(500, f"internal error: {e}"))
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        segs = [s for s in req.path.split("/") if s]
        kind = segs[0] if segs else ""
        if kind in ("exec", "attach", "portForward", "containerLogs") and req.method not in ("GET", "POST"):
            writer.write(http1.status_response(405, f"method {req.method} is not allowed here", "MethodNotAllowed"))
            return
        if req.method != "GET" and kind not in ("exec", "attach", "portForward"):
            writer.write(http1.status_response(405, f"method {req.method} is not allowed here", "MethodNotAllowed"))
            return
        if req.path in ("/healthz", "/livez", "/readyz"):
            writer.write(http1.response(200, b"ok"))
        elif req.path == "/stats/summary":
            writer.write(http1.response(200, json.dumps(self.summary()).encode(), "application/json"))
        elif req.path == "/metrics":
            writer.write(http1.response(200, self.metrics().encode(), "text/plain; version=0.0.4"))
        elif req.path == "/metrics/cadvisor":
            writer.write(http1.response(200, self.cadvisor().encode(), "text/plain; version=0.0.4"))
        elif kind in ("exec", "attach") and len(segs) in (4, 5):
            pod = self._pod(segs[1], segs[2], segs[3] if len(segs) == 5 else None)
            await self._remotecommand(req, reader, writer, pod, segs[-1], kind == "exec")
        elif kind == "portForward" and len(segs) in (3, 4):
            pod = self._pod(segs[1], segs[2], segs[3] if len(segs) == 4 else None)
            await self._portforward(req, reader, writer, pod)
        elif kind == "containerLogs" and len(segs) == 4:
            await self._logs(req, reader, writer, self._pod(segs[1], segs[2], None), segs[3])
        else:
            raise NotFound(f"the server could not find the requested resource {req.path}")

    def _pod(self, namespace: str, name: str, uid: str | None) -> PodView:
        pod = self.pods.find(namespace, name)
        if pod is None or (uid and pod.uid != uid):
            raise NotFound(f'pod "{name}" not found in namespace "{namespace}" on this node')
        return pod

    @staticmethod
    def _container(pod: PodView, name: str) -> str:
        names = pod.container_names()
        if name not in names:
            raise NotFound(f'container "{name}" not found in pod "{pod.name}"')
        return name

    # --- exec / attach ---------------------------------------------------------------------------

    async def _remotecommand(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             pod: PodView, container: str, is_exec: bool) -> None:
        opts = Options.from_request(req, command=is_exec)
        container = self._container(pod, container)
        if is_exec:
            target: ExecTarget | AttachTarget = pod.exec_target(container)
        else:
            target = pod.attach_target(container)
            if opts.tty and not target.tty:
                opts = Options(opts.stdin, opts.stdout, opts.stderr, False)
        headers = req.flat_headers()
        if websocket.is_upgrade(headers):
            protocol = self._ws_protocol(headers, channels.EXEC_WEBSOCKET)
            writer.write(http1.head(101, websocket.handshake(headers, protocol)))
            streams: remotecommand.Streams = remotecommand.WsStreams(WsConn(reader, writer), protocol, opts)
        else:
            protocol = self._spdy_upgrade(req, writer, channels.EXEC_SPDY)
            conn = SpdyConn(TcpBytes(reader, writer))
            serving = asyncio.create_task(conn.serve())
            try:
                streams = await remotecommand.SpdyStreams.accept(conn, protocol, opts)
            except BadRequest as e:
                log.info("exec in %s/%s: %s", pod.namespace, pod.name, e)
                await conn.close()
                serving.cancel()
                return
        if isinstance(target, ExecTarget):
            log.info("exec in %s/%s/%s (%s, tty=%s): %s", pod.namespace, pod.name, container, protocol or "v1",
                     opts.tty, " ".join(opts.command)[:200])
            status = await remotecommand.run_exec(target, opts, streams)
        else:
            log.info("attach to %s/%s/%s (%s)", pod.namespace, pod.name, container, protocol or "v1")
            status = await remotecommand.run_attach(target, opts, streams, logs.follow)
        with contextlib.suppress(ConnectionError, OSError):
            await streams.finish(status)

    @staticmethod
    def _ws_protocol(headers: dict[str, str], supported: tuple[str, ...]) -> str:
        protocol = websocket.choose_protocol(websocket.offered_protocols(headers), supported)
        if protocol is None:
            raise BadRequest(f"requested protocol(s) are not supported: {websocket.offered_protocols(headers)}; "
                             f"supports {list(supported)}")
        return protocol

    @staticmethod
    def _spdy_upgrade(req: Request, writer: asyncio.StreamWriter, supported: tuple[str, ...]) -> str:
        """Answer 101 to a SPDY upgrade with the negotiated protocol (httpstream.Handshake)."""
        upgrade, connection = req.header("upgrade").lower(), req.header("connection").lower()
        if spdy.UPGRADE.lower() not in upgrade or "upgrade" not in connection:
            raise BadRequest("Upgrade request required")
        offered = [p.strip() for v in req.values(spdy.PROTOCOL_HEADER) for p in v.split(",") if p.strip()]
        protocol = spdy.negotiate(offered, supported)
        if protocol is None:
            accepted = [(spdy.ACCEPTED_HEADER, p) for p in supported]
            writer.write(http1.response(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                                             f"{offered}, server supports {list(supported)}".encode(), extra=accepted))
            raise _Answered
        headers = [("Connection", "Upgrade"), ("Upgrade", spdy.UPGRADE)]
        if protocol:
            headers.append((spdy.PROTOCOL_HEADER, protocol))
        writer.write(http1.head(101, headers))
        return protocol

    # --- port-forward ----------------------------------------------------------------------------

    async def _portforward(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           pod: PodView) -> None:
        headers = req.flat_headers()
        if websocket.is_upgrade(headers):
            protocol = self._ws_protocol(headers, channels.PORT_FORWARD_WEBSOCKET)
            if protocol == channels.PORT_FORWARD_TUNNEL:
                writer.write(http1.head(101, websocket.handshake(headers, protocol)))
                conn = SpdyConn(WsBytes(WsConn(reader, writer)))
            else:
                try:
                    ports = channels.parse_ports(req.query.get("port", []) + req.query.get("ports", []))
                except ValueError as e:
                    raise BadRequest(str(e)) from None
                if not ports:
                    raise BadRequest("query parameter \"port\" is required")
                writer.write(http1.head(101, websocket.handshake(headers, protocol)))
                log.info("port-forward to %s/%s ports %s (websocket %s)", pod.namespace, pod.name, ports, protocol)
                await portforward.serve_websocket(WsConn(reader, writer), protocol, ports, pod.pod_netns, pod.name,
                                                  pod.uid)
                return
        else:
            self._spdy_upgrade(req, writer, channels.PORT_FORWARD_SPDY)
            conn = SpdyConn(TcpBytes(reader, writer))
        log.info("port-forward to %s/%s (SPDY%s)", pod.namespace, pod.name,
                 " over websocket" if isinstance(conn.transport, WsBytes) else "")
        serving = asyncio.create_task(conn.serve())
        try:
            await portforward.serve_spdy(conn, pod.pod_netns, pod.name, pod.uid)
        finally:
            serving.cancel()

    # --- logs ------------------------------------------------------------------------------------

    async def _logs(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pod: PodView,
                    container: str) -> None:
        opts = logs.LogOptions.from_request(req)
        container = self._container(pod, container)
        path = pod.log_file(container, opts.previous)
        writer.write(http1.head(200, [("Content-Type", "text/plain"), ("Connection", "close")]))

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        gone = asyncio.Event()  # the client closed: nothing more to follow for

        async def watch_client() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                await reader.read(1)
            gone.set()
        watcher = asyncio.create_task(watch_client())
        running = (lambda: False) if opts.previous else (lambda: pod.running(container))
        try:
            await logs.serve(path, opts, write, running, gone)
        finally:
            watcher.cancel()


class _Answered(Exception):
    """The response went out already (a refused upgrade)."""
