"""Streaming subresources benchmark: what a user waits for with `kubectl exec` and moves with
`kubectl port-forward` in the lab, through the real API server and node agent, in one run.

A 2-node lab with the control plane (no service proxy needed); a client pod and a server pod
whose container sends N MiB on every TCP connection. Measured, each path interleaved with the
others round by round so machine noise hits all alike, medians reported:

- exec: `kubectl exec <pod> -- true`, wall clock, over WebSocket (v5) and SPDY (this machine's
  kubectl with its feature gates) and with kubectl 1.20 if present; the Python client's
  `stream()` (v5 WebSocket, no process start) for the part kubectl's own start-up takes; and the
  node agent's share (`exec` log line to the process's end is not visible; the difference between
  the Python client and a `kubectl get pod` round trip is what the proxy and the agent add).
- port-forward: a download of N MiB through `kubectl port-forward` (SPDY tunnelled in a WebSocket,
  and plain SPDY) and through the Python client's v4 channels, in MiB/s.

    python -m bench.streams [--rounds 5] [--mib 32] [--json]

Needs root (the lab); the root namespace only talks to 127.0.0.1 (kubectl and the API server's
host port, port-forward's local port).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from bench.common import emit, median_ms, unique_prefix
from knet.kube import client
from lab import api
from lab.bringup import controlplane

SERVER = ("import socket\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', 9000)); s.listen(16)\n"
          "chunk = bytes(1 << 20)\n"
          "while True:\n"
          "    c, _ = s.accept()\n"
          "    try:\n"
          "        n = int(c.recv(64).split()[0])\n"
          "        for _ in range(n): c.sendall(chunk)\n"
          "    except (OSError, ValueError, IndexError): pass\n"
          "    c.close()\n")
SPDY_ENV = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


def kubectl_argv(binary: str, kubeconfig: str, *args: str) -> list[str]:
    return [binary, "--kubeconfig", kubeconfig, *args]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120, env={**os.environ, **(env or {})})


def download(port: int, mib: int) -> float:
    """Seconds to receive `mib` MiB from the server pod through a local forwarded port."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"{mib}\n".encode())
        got = 0
        while chunk := s.recv(1 << 20):
            got += len(chunk)
    if got != mib << 20:
        raise RuntimeError(f"received {got} bytes of {mib << 20}")
    return time.monotonic() - t0


@contextlib.contextmanager
def port_forward(binary: str, kubeconfig: str, pod: str, env: dict[str, str]) -> Iterator[int]:
    proc = subprocess.Popen(kubectl_argv(binary, kubeconfig, "port-forward", f"pod/{pod}", ":9000"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})
    try:
        line = ""
        while "127.0.0.1:" not in line:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise RuntimeError("kubectl port-forward ended")
        yield int(re.search(r"127\.0\.0\.1:(\d+)", line)[1])  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.streams")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mib", type=int, default=32, help="MiB per port-forward download")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    kubectl = shutil.which("kubectl")
    if os.geteuid() != 0 or not kubectl:
        print("bench.streams needs root and kubectl", file=sys.stderr)
        return 2
    old = os.environ.get("KNET_KUBECTL") or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), ".venv", "kubectl-1.20", "usr", "bin", "kubectl")
    name = unique_prefix("st")
    try:
        api.up(name, nodes=2, overlay="static", control_plane=True)
        kubeconfig = controlplane.kubeconfig_path(name)
        controlplane.loopback_only(kubeconfig)
        k8s = client.new_api_client(kubeconfig)
        for pod, container in (("bench-client", {"name": "c", "image": "busybox", "command": ["sleep", "3600"]}),
                               ("bench-server", {"name": "s", "image": "python",
                                                 "command": ["python3", "-c", SERVER]})):
            client.create(k8s, "Pod", {"metadata": {"name": pod}, "spec": {"containers": [container]}}, "default")
        deadline = time.monotonic() + 90
        while any(((client.get(k8s, "Pod", n, "default") or {}).get("status") or {}).get("phase") != "Running"
                  for n in ("bench-client", "bench-server")):
            if time.monotonic() > deadline:
                raise RuntimeError("bench pods not running")
            time.sleep(0.5)
        from kubernetes import client as kc
        from kubernetes.stream import portforward, stream
        core = kc.CoreV1Api(k8s)

        def py_download() -> float:
            pf = portforward(core.connect_get_namespaced_pod_portforward, "bench-server", "default", ports="9000")
            s = pf.socket(9000)
            s.setblocking(True)
            t0 = time.monotonic()
            s.sendall(f"{args.mib}\n".encode())
            got = 0
            while chunk := s.recv(1 << 20):
                got += len(chunk)
            s.close()
            if got != args.mib << 20:
                raise RuntimeError(f"python client received {got} bytes")
            return time.monotonic() - t0

        exec_paths: dict[str, Callable[[], object]] = {
            "kubectl exec (websocket)": lambda: run(kubectl_argv(kubectl, kubeconfig, "exec", "bench-client", "--",
                                                                 "true")),
            "kubectl exec (spdy)": lambda: run(kubectl_argv(kubectl, kubeconfig, "exec", "bench-client", "--",
                                                            "true"), SPDY_ENV),
            "python stream() exec": lambda: stream(core.connect_get_namespaced_pod_exec, "bench-client", "default",
                                                   command=["true"], stdout=True, stderr=True, stdin=False,
                                                   tty=False),
            "kubectl get pod (no exec)": lambda: run(kubectl_argv(kubectl, kubeconfig, "get", "pod",
                                                                  "bench-client")),
        }
        if os.access(old, os.X_OK):
            exec_paths["kubectl 1.20 exec (spdy)"] = lambda: run(kubectl_argv(old, kubeconfig, "exec",
                                                                              "bench-client", "--", "true"))
        samples: dict[str, list[float]] = {k: [] for k in exec_paths}
        transfer: dict[str, list[float]] = {"port-forward websocket tunnel": [], "port-forward spdy": [],
                                            "python portforward (v4 channels)": []}
        with port_forward(kubectl, kubeconfig, "bench-server", {}) as ws_port, \
                port_forward(kubectl, kubeconfig, "bench-server", SPDY_ENV) as spdy_port:
            for _ in range(args.rounds):
                for key, fn in exec_paths.items():
                    samples[key].append(timed(fn))
                transfer["port-forward websocket tunnel"].append(download(ws_port, args.mib))
                transfer["port-forward spdy"].append(download(spdy_port, args.mib))
                transfer["python portforward (v4 channels)"].append(py_download())
        load = os.getloadavg()[0]
        rows = [(k, f"{median_ms(v):.0f} ms") for k, v in samples.items()]
        rows += [(k, f"{args.mib / statistics.median(v):.1f} MiB/s") for k, v in transfer.items()]
        rows.append(("load average (1 min)", f"{load:.1f}"))
        summary = {"exec_ms": {k: median_ms(v) for k, v in samples.items()},
                   "port_forward_mib_s": {k: round(args.mib / statistics.median(v), 1) for k, v in transfer.items()},
                   "rounds": args.rounds, "mib": args.mib, "load_average": round(load, 2)}
        emit(rows, summary, args.json)
        k8s.close()
    finally:
        api.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
