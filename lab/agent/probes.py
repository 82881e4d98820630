"""Readiness, liveness and startup probes: the scheduling and threshold logic (pure, `Tracker`)
and the three handlers (httpGet, tcpSocket, exec), run as the kubelet runs them: from the node's
network namespace to the pod's address for httpGet/tcpSocket, inside the pod for exec.

Semantics (the kubelet's): the first probe runs initialDelaySeconds after the container started,
then every periodSeconds; the result flips to success after successThreshold consecutive
successes and to failure after failureThreshold consecutive failures. A readiness result starts
as failure (not ready until a probe passes), a liveness or startup result as success."""

from __future__ import annotations

import http.client
import socket
import subprocess
from dataclasses import dataclass, field

from knet import netns
from knet.kube.models import Container, HTTPGetAction, Probe, TCPSocketAction

READINESS, LIVENESS, STARTUP = "readiness", "liveness", "startup"


@dataclass
class Tracker:
    probe: Probe
    kind: str
    started: float                 # monotonic time the container started
    result: bool = field(init=False)
    successes: int = 0
    failures: int = 0
    last_run: float | None = None
    last_message: str = ""

    def __post_init__(self) -> None:
        self.result = self.kind != READINESS

    def next_due(self) -> float:
        if self.last_run is None:
            return self.started + self.probe.initial_delay_seconds
        return self.last_run + self.probe.period_seconds

    def due(self, now: float) -> bool:
        return now >= self.next_due()

    def record(self, ok: bool, now: float, message: str = "") -> bool:
        """Feed one probe outcome; True when the result flipped."""
        self.last_run = now
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            flip = not self.result and self.successes >= self.probe.success_threshold
        else:
            self.failures += 1
            self.successes = 0
            flip = self.result and self.failures >= self.probe.failure_threshold
        if flip:
            self.result = not self.result
        return flip


def resolve_port(port: int | str, container: Container) -> int | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    return next((p.container_port for p in container.ports if p.name == port), None)


class _Unresolved(Exception):
    """A probe's host or (named) port cannot be resolved; the message says which target."""


def _target(action: HTTPGetAction | TCPSocketAction, container: Container, pod_ip: str | None) -> tuple[str, int]:
    """(host, port) an httpGet or tcpSocket probe connects to: its host or else the pod's IP."""
    port = resolve_port(action.port, container)
    host = action.host or pod_ip
    if port is None or not host:
        raise _Unresolved(f"cannot resolve probe target {host}:{action.port}")
    return host, port


def run_probe(probe: Probe, container: Container, pod_ip: str | None, pod_netns: str) -> tuple[bool, str]:
    """(success, message). Never raises."""
    timeout = float(probe.timeout_seconds)
    try:
        if probe.http_get is not None:
            h = probe.http_get
            host, port = _target(h, container, pod_ip)
            cls = http.client.HTTPSConnection if h.scheme == "HTTPS" else http.client.HTTPConnection
            kwargs = {"context": _insecure()} if h.scheme == "HTTPS" else {}
            conn = cls(host, port, timeout=timeout, **kwargs)
            try:
                headers = {"User-Agent": "kube-probe/1.29", "Accept": "*/*"}
                headers.update({x.name: x.value for x in h.http_headers})
                conn.request("GET", h.path or "/", headers=headers)
                code = conn.getresponse().status
            finally:
                conn.close()
            return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}" if code >= 400 else ""
        if probe.tcp_socket is not None:
            host, port = _target(probe.tcp_socket, container, pod_ip)
            with socket.create_connection((host, port), timeout=timeout):
                return True, ""
        if probe.exec is not None:
            proc = subprocess.run(netns.exec_argv(pod_netns, probe.exec.command), capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
            out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-300:]
            return proc.returncode == 0, out if proc.returncode else ""
        return False, "unsupported probe handler (grpc)"
    except _Unresolved as e:
        return False, str(e)
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:.0f}s"
    except (OSError, http.client.HTTPException) as e:
        return False, f"probe failed: {type(e).__name__}: {e}"


def _insecure():
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates either
    return ctx
