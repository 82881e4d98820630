"""A container is a process in the pod's network namespace (`ip netns exec`, which also mounts
/etc/netns/<pod>/resolv.conf and hosts over /etc), in a session of its own so that stopping it
reaches its children. A process is identified by pid + start time (from /proc), so an agent that
restarted can adopt the processes its predecessor started without mistaking a reused pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from knet import cgroups, netns


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
    def spawn(cls, pod_netns: str, argv: Sequence[str], env: dict[str, str], log_path: str,
              cwd: str | None = None, cgroup: str | None = None) -> Process:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        cmd = netns.exec_argv(pod_netns, list(argv))
        if cgroup:
            cmd = cgroups.join_argv(cgroup, cmd)  # joins before exec: the pid stays the container's
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                     cwd=cwd if cwd and os.path.isdir(cwd) else "/")
        # `ip netns exec` execs the command in place: the pid is the container's own.
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
