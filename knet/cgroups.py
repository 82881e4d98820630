"""cgroup v2 helpers: the lab puts each node's pods in a cgroup of their own so that kproxy's eBPF
socket hooks (attached to that cgroup, never to the root) see exactly that node's pods.

On this machine cgroup v2 is the "unified" hierarchy of a hybrid setup (/sys/fs/cgroup/unified);
on a pure v2 host it is /sys/fs/cgroup itself. Nothing here ever touches the hierarchy's root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def root() -> str | None:
    """The mounted cgroup v2 hierarchy, or None."""
    for path in CANDIDATES:
        if os.path.exists(os.path.join(path, "cgroup.procs")) and os.path.exists(
                os.path.join(path, "cgroup.subtree_control")):
            return path
    return None


def path_for(*parts: str) -> str | None:
    base = root()
    return os.path.join(base, *parts) if base else None


def ensure(path: str) -> str:
    if os.path.realpath(path) in {os.path.realpath(c) for c in CANDIDATES}:
        raise ValueError("refusing to use the root of the cgroup hierarchy")
    os.makedirs(path, exist_ok=True)
    return path


def join(path: str, pid: int = 0) -> None:
    """Move a process (0: the caller) into the cgroup."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid or os.getpid()))


def join_argv(path: str, argv: list[str]) -> list[str]:
    """argv wrapped so the process joins the cgroup before it execs the command (it never runs
    outside it). A shell does the join: a preexec_fn is unsafe in threaded callers."""
    procs = os.path.join(path, "cgroup.procs")
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]


def pids(path: str) -> list[int]:
    out: list[int] = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                out += [int(x) for x in f.read().split()]
    return out


def remove(path: str, grace: float = 2.0) -> None:
    """Kill every process in the subtree and remove the cgroups, leaves first."""
    if not os.path.isdir(path):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids(path) and time.monotonic() < deadline:
            time.sleep(0.02)
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
