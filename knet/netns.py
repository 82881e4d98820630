"""Network-namespace helpers shared by every component.

Namespaces are named bind mounts under /run/netns (what `ip netns` and container runtimes use).
`enter()` switches only the calling thread, so a daemon can build sockets in other namespaces
without forking: a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

from knet.cgroups import join_argv

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def path(name_or_path: str) -> str:
    """The bind-mount path of a named namespace (a path is returned unchanged)."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_DIR, name_or_path)


def exists(name_or_path: str) -> bool:
    return os.path.exists(path(name_or_path))


def list_names(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def inode(name_or_path: str | None = None) -> int:
    """Inode of a namespace (None: the caller's own), which identifies it across paths."""
    return os.stat(path(name_or_path) if name_or_path else "/proc/thread-self/ns/net").st_ino


def create(name: str) -> str:
    if exists(name):
        raise FileExistsError(f"network namespace {name} already exists")
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    # Every namespace starts with lo down; nothing local works without it.
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return path(name)


def pids(name_or_path: str) -> list[int]:
    """Processes whose network namespace is this one."""
    try:
        target = inode(name_or_path)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                found.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def kill_processes(name_or_path: str, grace: float = 2.0) -> None:
    """SIGTERM every process in the namespace, SIGKILL what is left after `grace` seconds."""
    victims = [p for p in pids(name_or_path) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 1.0)
        while victims and time.monotonic() < deadline:
            victims = [p for p in victims if _alive(p)]
            if victims:
                time.sleep(0.02)
        if not victims:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def delete(name: str) -> None:
    """Kill the namespace's processes and remove it; a missing namespace is not an error."""
    if not exists(name):
        return
    kill_processes(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def enter(name_or_path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the namespace, then switch back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path(name_or_path), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """Command line that runs argv inside the namespace (with its /etc/netns/<name> overlays)."""
    return ["ip", "netns", "exec", name, *argv]


def run(name: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(exec_argv(name, argv), **kwargs)


def spawn(name: str, argv: Sequence[str], log_path: str | None = None,
          env: dict[str, str] | None = None, cgroup: str | None = None,
          keep_mounts: bool = False) -> subprocess.Popen:
    """Start a detached long-running process inside the namespace (its own session).

    `cgroup`: the child joins it before it execs. `keep_mounts`: enter only the network
    namespace (nsenter) instead of `ip netns exec`, whose private mount namespace hides
    /sys/fs/cgroup and /run/netns bind mounts made later by others."""
    cmd = ["nsenter", f"--net={path(name)}", "--", *argv] if keep_mounts else exec_argv(name, argv)
    if cgroup:
        cmd = join_argv(cgroup, cmd)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    finally:
        if not isinstance(out, int):
            out.close()
