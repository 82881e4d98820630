"""The lab's etcd: one member in the control namespace, data in the lab's state dir.

It serves the overlay (flannel keys under /coreos.com/network) and the lab API server
(/registry), on the lab LAN and on the control namespace's loopback.
"""

from __future__ import annotations

import os
import shutil

from knet import netns
from lab.bringup import launch
from lab.errors import LabError
from lab.net import topology


class EtcdError(LabError):
    pass


def etcd_dir(p: topology.Plan) -> str:
    return os.path.join(p.state_dir, "etcd")


def healthy(p: topology.Plan) -> bool:
    proc = netns.run(p.ctl.netns, ["etcdctl", "--endpoints", "http://127.0.0.1:2379",
                                   "--command-timeout=1s", "endpoint", "health"])
    return proc.returncode == 0


def start(p: topology.Plan, progress=print, wait: float = 20.0, binary: str | None = None) -> None:
    """Start etcd (`binary`, else Debian's) in <lab>-ctl unless it already answers there."""
    if healthy(p):
        return
    binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
    data = etcd_dir(p)
    os.makedirs(data, mode=0o700, exist_ok=True)
    log = os.path.join(data, "etcd.log")
    daemon = launch.spawn("etcd", p.ctl.netns, [
        binary, "--name", f"{p.name}-etcd", "--data-dir", os.path.join(data, "data"),
        "--listen-client-urls", f"{topology.ETCD_URL},http://127.0.0.1:2379",
        "--advertise-client-urls", topology.ETCD_URL,
        "--listen-peer-urls", "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
        "--initial-cluster", f"{p.name}-etcd=http://127.0.0.1:2380",
        # A lab restarts often and keeps little history: compact so the data dir stays small.
        "--auto-compaction-retention", "1h", "--quota-backend-bytes", str(512 * 1024 * 1024),
    ], log, EtcdError)
    if not launch.wait_until(lambda: healthy(p), [daemon], wait):
        raise EtcdError(f"etcd did not become healthy in {wait:.0f}s (see {log})")
    progress(f"etcd: {topology.ETCD_URL} in {p.ctl.netns} (data {data})")


def put(p: topology.Plan, key: str, value: str) -> None:
    proc = netns.run(p.ctl.netns, ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "put", key, value])
    if proc.returncode != 0:
        raise EtcdError(f"etcdctl put {key} failed: {proc.stderr.strip()}")


