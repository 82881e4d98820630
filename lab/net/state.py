"""lab.json: the lab's description and its pods, shared by concurrent `knet lab` processes.

Pod adds run in parallel (tests, benchmarks), so every read-modify-write holds an flock on a
separate lock file; lab.json itself is replaced atomically so readers never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from lab.errors import NoSuchLab
from lab.net import topology

LAB_JSON = "lab.json"
LOCK = "lab.lock"
OWNER = "owner"


def lab_json(lab: str, root: str = topology.STATE_ROOT) -> str:
    return os.path.join(topology.state_dir(lab, root), LAB_JSON)


def exists(lab: str, root: str = topology.STATE_ROOT) -> bool:
    return os.path.exists(lab_json(lab, root))


def load(lab: str, root: str = topology.STATE_ROOT) -> dict:
    try:
        with open(lab_json(lab, root)) as f:
            return json.load(f)
    except FileNotFoundError:
        raise NoSuchLab(f"lab {lab} does not exist (no {lab_json(lab, root)}); "
                          f"start it with: knet lab up --name {lab}") from None


def save(data: dict, lab: str, root: str = topology.STATE_ROOT) -> None:
    path = lab_json(lab, root)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(lab: str, root: str = topology.STATE_ROOT) -> Iterator[None]:
    path = os.path.join(topology.state_dir(lab, root), LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def update(lab: str, root: str = topology.STATE_ROOT) -> Iterator[dict]:
    """Read lab.json under the lock, let the body change it, write it back."""
    with locked(lab, root):
        data = load(lab, root)
        yield data
        save(data, lab, root)


def write_owner(lab: str, root: str = topology.STATE_ROOT) -> None:
    """Record which process built the lab, so test sessions only sweep labs of dead sessions."""
    with open(os.path.join(topology.state_dir(lab, root), OWNER), "w") as f:
        f.write(f"{os.getpid()}\n")


def owner_alive(lab: str, root: str = topology.STATE_ROOT) -> bool:
    try:
        with open(os.path.join(topology.state_dir(lab, root), OWNER)) as f:
            pid = int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_labs(root: str = topology.STATE_ROOT) -> list[str]:
    try:
        return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    except FileNotFoundError:
        return []
