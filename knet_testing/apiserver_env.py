"""A private etcd and the lab's knet-apiserver on 127.0.0.1 (free ports, the caller's temp dir),
for the test suites that talk to a real API server without a lab (tests/integration/apiserver,
kdns, kube). Processes are started here; each conftest's fixture stops them whatever happens.
Only loopback sockets in the root namespace (the API server may also listen in a test's own
namespace through --listen-netns)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab.apiserver import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: str, n: int = 3000) -> str:
    """The end of a log ("" when there is none)."""
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return f.read()[-n:]
    return ""


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: str = "") -> None:
    """Until `cond()`; fails early when `proc` exits, with the end of its `log` either way."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout}s: {tail(log)}")
        time.sleep(0.05)


def start(argv: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process of the repository's, its output appended to `log` (`env`: added to ours)."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env={**os.environ, **env} if env else None)


def stop(proc: subprocess.Popen | None) -> int | None:
    """SIGTERM, then SIGKILL after 10 s; the exit code (None: there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class Etcd:
    url: str
    proc: subprocess.Popen
    log: str

    def etcdctl(self, *args: str, check: bool = False, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["etcdctl", "--endpoints", self.url, "--dial-timeout", "2s", *args],
                              capture_output=True, text=True, input=stdin, timeout=20,
                              env=dict(os.environ, ETCDCTL_API="3"))
        if check and proc.returncode != 0:
            raise AssertionError(f"etcdctl {args}: {proc.stderr}")
        return proc

    def keys(self, prefix: str) -> list[str]:
        out = self.etcdctl("get", "--prefix", "--keys-only", prefix).stdout
        return [line for line in out.splitlines() if line.strip()]


def start_etcd(tmp: str, *extra: str, binary: str = "etcd") -> Etcd:
    """A single-member etcd with its data and log under `tmp`, healthy on return (`binary`:
    another etcd than Debian's, e.g. the one kube-apiserver is paired with)."""
    url, peer = f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}"
    log = os.path.join(tmp, "etcd.log")
    proc = start([binary, "--name", "t", "--data-dir", os.path.join(tmp, "etcd"),
                  "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
                  "--initial-advertise-peer-urls", peer, "--initial-cluster", f"t={peer}", *extra], log)
    e = Etcd(url, proc, log)
    try:
        wait_for(lambda: e.etcdctl("endpoint", "health").returncode == 0, 20, "etcd", proc, log)
    except BaseException:
        stop(proc)
        raise
    return e


@dataclass
class ApiServerProcess:
    proc: subprocess.Popen
    urls: list[str]  # from the ready file: the --listen addresses, then the --listen-netns ones
    certs: pki.Pki | None  # None: plain HTTP
    argv: list[str]
    log: str


def start_apiserver(tmp: str, etcd_url: str, prefix: str, tokens: str, *extra: str, tls: bool = True,
                    listen: str = f"{HOST}:0") -> ApiServerProcess:
    """knet-apiserver with its files under `tmp` (`tokens`: the lines of its tokens.csv), HTTPS with
    a certificate for 127.0.0.1 unless `tls` is false; ready (listening) on return. A caller that
    gets an exception here has nothing to stop."""
    os.makedirs(tmp, exist_ok=True)
    tokens_file = os.path.join(tmp, "tokens.csv")
    with open(tokens_file, "w") as f:
        f.write(tokens)
    ready = os.path.join(tmp, "ready.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ready)  # a restart: wait for the new process's file
    argv = [sys.executable, "-m", "lab.apiserver.main", "--etcd", etcd_url, "--etcd-prefix", prefix,
            "--tokens", tokens_file, "--listen", listen, "--ready-file", ready]
    certs = None
    if tls:
        certs = pki.ensure(os.path.join(tmp, "pki"), [HOST])
        argv += ["--tls-cert-file", certs.cert, "--tls-private-key-file", certs.key]
    argv += extra
    log = os.path.join(tmp, "apiserver.log")
    proc = start(argv, log)
    try:
        wait_for(lambda: os.path.exists(ready), 40, "knet-apiserver", proc, log)
        with open(ready) as f:
            urls = json.load(f)["listen"]
    except BaseException:
        stop(proc)
        raise
    return ApiServerProcess(proc, urls, certs, argv, log)
