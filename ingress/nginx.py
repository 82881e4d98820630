"""Our own nginx master process: own config, prefix, pid file, temp and log files under a run
directory; never the system service.

Changing the configuration: write `nginx.conf.next`, `nginx -t` it, rename it over `nginx.conf`,
SIGHUP the master. nginx then starts new workers with the new configuration on the same listening
sockets and tells the old workers to finish: they stop accepting, complete the requests they
have in flight (bounded by `worker_shutdown_timeout`), close idle keep-alive connections and exit.
So a reload never refuses a connection and never cuts a request; the integration tests prove it
with request streams during endpoint churn and Ingress edits. A config that fails `nginx -t` is
never installed: the running configuration stays, and the error is reported.

A reload has taken effect once the internal status server answers the new config's digest
(`/knet/config` on 127.0.0.1:<status port>). When the controller runs in another network
namespace than nginx (the tests), every process and socket is made inside `netns`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time

from ingress.nginxconf import config_digest
from knet import netns as knetns

log = logging.getLogger("knet.ingress.nginx")


class NginxError(RuntimeError):
    pass


class Nginx:
    def __init__(self, run_dir: str, status_port: int, *, netns: str | None = None, binary: str = "nginx") -> None:
        self.run_dir = os.path.abspath(run_dir)
        self.status_port = status_port
        self.netns = netns
        self.binary = binary
        self.conf = os.path.join(self.run_dir, "nginx.conf")
        self.pid_file = os.path.join(self.run_dir, "nginx.pid")
        self.error_log = os.path.join(self.run_dir, "error.log")
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.digest = ""
        # Workers run unprivileged and buffer large bodies under tmp/ (nginx creates its subdirs
        # owned by the worker user): the run dir must be traversable; certs/ stays 0700 (only
        # the master, root, reads certificates).
        os.makedirs(self.run_dir, exist_ok=True)
        os.chmod(self.run_dir, 0o711)
        os.makedirs(os.path.join(self.run_dir, "tmp"), mode=0o711, exist_ok=True)

    # -- commands
    def _argv(self, *extra: str, conf: str | None = None) -> list[str]:
        argv = [self.binary, "-p", self.run_dir + "/", "-e", self.error_log, "-c", conf or self.conf, *extra]
        return knetns.exec_argv(self.netns, argv) if self.netns else argv

    def test(self, text: str) -> str:
        """Write the candidate config and `nginx -t` it; returns its path, raises NginxError."""
        path = self.conf + ".next"
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run(self._argv("-t", "-q", conf=path), capture_output=True, text=True)
        if r.returncode != 0:
            raise NginxError(f"nginx -t failed: {(r.stderr or r.stdout).strip()}")
        return path

    def _install(self, text: str) -> str:
        path = self.test(text)
        os.replace(path, self.conf)
        return config_digest(text)

    # -- process
    def _find_master(self) -> int | None:
        """A master left running by an earlier controller with this run dir (adopt it rather than
        fail to bind: a controller restart must not interrupt traffic)."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return None
        return pid if "nginx: master" in cmd and self.conf in cmd else None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return self._find_master() == self.pid

    def start(self, text: str, timeout: float = 15.0) -> None:
        digest = self._install(text)
        pid = self._find_master()
        if pid is not None:
            log.info("adopting running nginx master pid=%d", pid)
            self.pid = pid
            self._signal(signal.SIGHUP)
        else:
            out = open(os.path.join(self.run_dir, "nginx.out"), "ab")  # noqa: SIM115
            try:
                # daemon off: the master is our child, so its exit is seen (and reaped) at once.
                self.proc = subprocess.Popen(self._argv("-g", "daemon off;"), stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            finally:
                out.close()
            self.pid = self.proc.pid
        if not self.wait_config(digest, timeout):
            raise NginxError(f"nginx did not come up with config {digest}: {self.error_tail()}")
        self.digest = digest
        log.info("nginx running pid=%d config=%s", self.pid, digest)

    def reload(self, text: str, timeout: float = 15.0) -> None:
        """Install a new configuration and wait until nginx serves it. Raises NginxError (the old
        configuration keeps running) when it is invalid or does not take effect."""
        digest = self._install(text)
        old = set(self.workers(accepting=True))
        self._signal(signal.SIGHUP)
        if not self.wait_config(digest, timeout):
            raise NginxError(f"nginx did not switch to config {digest}: {self.error_tail()}")
        # The new workers answer; the old ones may still accept until the master's QUIT reaches
        # them. Done only when none of them accepts any more: from then on every new connection
        # gets the new configuration.
        deadline = time.monotonic() + timeout
        while old & set(self.workers(accepting=True)) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.digest = digest

    def reopen_logs(self) -> None:
        self._signal(signal.SIGUSR1)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful quit (in-flight requests finish), then TERM, then KILL."""
        if self.pid is None:
            return
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)
        self.pid = None
        self.proc = None

    def workers(self, accepting: bool = False) -> list[int]:
        """The master's worker processes (`accepting`: those not shutting down — a worker retitles
        itself "worker process is shutting down" and then closes its listening sockets at once)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != self.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, ValueError, IndexError):
                continue
            if title.startswith("nginx: worker process") and (not accepting or "shutting down" not in title):
                found.append(int(entry))
        return found

    def _signal(self, sig: int) -> None:
        if self.pid is None or not self.alive():
            raise NginxError("nginx is not running")
        os.kill(self.pid, sig)

    def error_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError), open(self.error_log, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
        return ""

    # -- the internal status server
    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET from the status server on 127.0.0.1 of nginx's namespace."""
        if self.netns:
            with knetns.enter(self.netns):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with s:
            s.settimeout(timeout)
            s.connect(("127.0.0.1", self.status_port))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode(errors="replace")

    def wait_config(self, digest: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            with contextlib.suppress(OSError, ValueError, IndexError):
                code, body = self.get("/knet/config", timeout=1.0)
                if code == 200 and body.strip() == digest:
                    return True
            time.sleep(0.02)
        return False

    def stub_status(self) -> dict[str, int]:
        """nginx's stub_status as numbers (active, accepts, handled, requests, reading, writing, waiting)."""
        _, body = self.get("/nginx_status")
        words = body.split()
        try:
            return {"active": int(words[2]), "accepts": int(words[7]), "handled": int(words[8]),
                    "requests": int(words[9]), "reading": int(words[11]), "writing": int(words[13]),
                    "waiting": int(words[15])}
        except (IndexError, ValueError):
            return {}
