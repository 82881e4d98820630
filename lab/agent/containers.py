"""A container is a process in the pod's network namespace (`ip netns exec`, which also mounts
/etc/netns/<pod>/resolv.conf and hosts over /etc), in a session of its own so that stopping it
reaches its children, in a cgroup of its own (per-container CPU and memory). A process is
identified by pid + start time (from /proc), so an agent that restarted can adopt the processes
its predecessor started without mistaking a reused pid.

Its output goes through pipes (a terminal with `tty: true`) to a log writer process of its own
(`logwriter.py`, what conmon is to a container), which keeps it in CRI log files and outlives
the agent. With `stdin: true` the log writer also feeds the container's input (a pipe, or the
terminal) from a FIFO that `kubectl attach` writes to, and closes it when told (stdinOnce)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from knet import cgroups, netns

LOGWRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logwriter.py")


@dataclass(frozen=True)
class ContainerIO:
    """Where one container instance's terminal, input and output go."""
    log_path: str                     # <pod log dir>/<container>/<restart count>.log
    tty: bool = False
    stdin_fifo: str | None = None     # what `kubectl attach` writes for the container (`stdin: true`)
    control_fifo: str | None = None   # JSON lines for the log writer: terminal sizes, closing stdin
    max_size: int = 10 * 1024 * 1024
    max_files: int = 5


def _fifo(path: str) -> int:
    """The FIFO opened read-write: opening never blocks, and its reader never sees EOF between
    writers (the log writer, which inherits it, is its reader from the start)."""
    if not os.path.exists(path):
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR)


def _start_logwriter(io: ContainerIO, fds: dict[str, int]) -> None:
    """The container's I/O keeper, given its ends: `out`, `err` (or the terminal as `out`), `stdin`
    (the container's input: the terminal, or a pipe's write end), `stdin-fifo`, `control-fifo`."""
    argv = [sys.executable, "-S", LOGWRITER, "--log", io.log_path, "--max-size", str(io.max_size),
            "--max-files", str(io.max_files), *(["--tty"] if io.tty else [])]
    for name, fd in fds.items():
        argv += [f"--{name}-fd", str(fd)]
    with open(os.path.join(os.path.dirname(io.log_path), "logwriter.err"), "ab") as err:
        # Not waited for: it lives as long as the container's output, across agent restarts
        # (subprocess reaps it once this object is gone and it has exited).
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                         pass_fds=sorted(set(fds.values())), start_new_session=True, close_fds=True)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


class Process:
    def __init__(self, pid: int, started: int | None, popen: subprocess.Popen | None = None) -> None:
        self.pid, self.started, self.popen = pid, started, popen

    @classmethod
    def spawn(cls, pod_netns: str, argv: Sequence[str], env: dict[str, str], io: ContainerIO,
              cwd: str | None = None, cgroup: str | None = None) -> Process:
        """pod_netns "": in the agent's own namespace (a hostNetwork pod of an agent that is not
        told its node's namespace name)."""
        os.makedirs(os.path.dirname(io.log_path), exist_ok=True)
        inner = ["setsid", "--ctty", *argv] if io.tty else list(argv)
        cmd = netns.exec_argv(pod_netns, inner) if pod_netns else inner
        if cgroup:
            cmd = cgroups.join_argv(cgroups.ensure(cgroup), cmd)  # joins before exec: the pid stays the container's
        ours: list[int] = []  # descriptors this process holds only until both children have them
        try:
            keeper: dict[str, int] = {}
            if io.tty:
                master, slave = os.openpty()
                ours += [master, slave]
                stdin = stdout = stderr = slave
                keeper = {"out": master, "stdin": master}
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                ours += [out_r, out_w, err_r, err_w]
                stdout, stderr, keeper = out_w, err_w, {"out": out_r, "err": err_r}
                stdin = subprocess.DEVNULL
                if io.stdin_fifo:  # a pipe the log writer feeds from the FIFO, and closes for stdinOnce
                    in_r, in_w = os.pipe()
                    ours += [in_r, in_w]
                    stdin, keeper["stdin"] = in_r, in_w
            for name, path in (("stdin-fifo", io.stdin_fifo), ("control-fifo", io.control_fifo)):
                if path:
                    keeper[name] = _fifo(path)
                    ours.append(keeper[name])
            _start_logwriter(io, keeper)
            env = {"TERM": "xterm", **env} if io.tty else env
            popen = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                                     # a tty container gets its session (and terminal) from setsid
                                     start_new_session=not io.tty,
                                     cwd=cwd if cwd and os.path.isdir(cwd) else "/")
        finally:
            for fd in ours:
                os.close(fd)
        # `ip netns exec` and setsid exec the command in place: the pid is the container's own.
        return cls(popen.pid, start_time(popen.pid), popen)

    @classmethod
    def adopt(cls, pid: int, started: int | None) -> Process | None:
        """The process if it still is the one we recorded (same pid and start time)."""
        now = start_time(pid)
        if now is None or (started is not None and now != started):
            return None
        return cls(pid, now)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return start_time(self.pid) == self.started and self.started is not None

    def exit_code(self) -> int | None:
        """Exit status once dead (None while running, or for an adopted process: not our child)."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is not None and code < 0:
            return 128 - code  # killed by a signal: the shell convention the kubelet reports
        return code

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM to its process group, SIGKILL after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            if not self.alive():
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.alive():
                time.sleep(0.02)


class Backoff:
    """CrashLoopBackOff: 1 s doubling to 30 s (the kubelet's 10 s to 5 min, scaled to a lab),
    reset once a container has run for 10 s."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, reset_after: float = 10.0) -> None:
        self.initial, self.maximum, self.reset_after = initial, maximum, reset_after
        self.delay = 0.0

    def on_exit(self, ran_for: float) -> float:
        """Seconds to wait before the next start."""
        if ran_for >= self.reset_after:
            self.delay = 0.0
        self.delay = self.initial if self.delay == 0 else min(self.delay * 2, self.maximum)
        return self.delay
