"""kproxy in the lab: one daemon per node, in the node's network namespace, in the chosen mode.

Started with nsenter (network namespace only), not `ip netns exec`: the eBPF mode attaches to
the node's pod cgroup under /sys/fs/cgroup, which `ip netns exec`'s private /sys would hide.
"""

from __future__ import annotations

import os
import sys
import time

from knet import netns
from lab import kernel, topology

MODES = ("iptables", "userspace", "ebpf")
METRICS_PORT = 10249


class ProxyError(RuntimeError):
    pass


def kproxy_argv(p: topology.Plan, n: topology.Node, mode: str, kubeconfig: str) -> list[str]:
    argv = [os.path.join(os.path.dirname(sys.executable), "kproxy"), "--mode", mode, "--kubeconfig", kubeconfig,
            "--node-name", n.short, "--cluster-cidr", topology.POD_CIDR,
            "--metrics-bind-address", f"{n.ip}:{METRICS_PORT}"]
    if mode == "ebpf":
        cg = kernel.node_cgroup(p.name, n.short)
        if not cg:
            raise ProxyError("ebpf mode needs cgroup v2 (/sys/fs/cgroup/unified or /sys/fs/cgroup)")
        argv += ["--cgroup", cg, "--external-iface", "eth0"]
    return argv


def start(p: topology.Plan, mode: str, kubeconfig: str, progress=print, wait: float = 30.0) -> dict[str, dict]:
    """Start kproxy on every node and wait until each has done its first sync."""
    if mode not in MODES:
        raise ProxyError(f"proxy mode must be one of {', '.join(MODES)}")
    kernel.ensure_node_cgroups(p)
    procs = {}
    for n in p.nodes:
        log = os.path.join(n.dir, "kproxy.log")
        procs[n.short] = (netns.spawn(n.netns, kproxy_argv(p, n, mode, kubeconfig), log_path=log,
                                      keep_mounts=True), log)
    deadline = time.monotonic() + wait
    pending = dict(procs)
    while pending:
        for short, (proc, log) in list(pending.items()):
            if proc.poll() is not None:
                with open(log, errors="replace") as f:
                    tail = f.read()[-1200:]
                raise ProxyError(f"kproxy ({mode}) on {short} exited with {proc.returncode}:\n{tail}")
            with open(log, errors="replace") as f:
                if "msg=\"sync full=True" in f.read():
                    del pending[short]
        if pending:
            if time.monotonic() > deadline:
                raise ProxyError(f"kproxy ({mode}) did not sync within {wait:.0f}s on {', '.join(sorted(pending))}")
            time.sleep(0.1)
    progress(f"kproxy ({mode}): " + ", ".join(f"{k} pid {v[0].pid}" for k, v in sorted(procs.items())))
    return {k: {"pid": v[0].pid, "log": v[1], "mode": mode} for k, v in procs.items()}


def stop(p: topology.Plan) -> None:
    """Stop every node's kproxy (the data path stays, as after a SIGTERM on a real node)."""
    for n in p.nodes:
        for pid in netns.pids(n.netns):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"/kproxy") for part in cmd[:2]):
                os.kill(pid, 15)
