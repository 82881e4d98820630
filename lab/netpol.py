"""netpolicy in the lab: one daemon per node, in the node's network namespace, enforcing the
NetworkPolicies of the pods on that node (nftables in the node namespace)."""

from __future__ import annotations

import os
import sys
import time

from knet import netns
from lab import topology

METRICS_PORT = 9641


class NetpolError(RuntimeError):
    pass


def start(p: topology.Plan, kubeconfig: str, progress=print, wait: float = 30.0) -> dict[str, dict]:
    binary = os.path.join(os.path.dirname(sys.executable), "netpolicy")
    procs = {}
    for n in p.nodes:
        log = os.path.join(n.dir, "netpolicy.log")
        argv = [binary, "--kubeconfig", kubeconfig, "--node-name", n.short,
                "--metrics-bind-address", f"{n.ip}:{METRICS_PORT}"]
        procs[n.short] = (netns.spawn(n.netns, argv, log_path=log, keep_mounts=True), log)
    deadline = time.monotonic() + wait
    # Started is enough: the daemon programs nothing before its informers have synced, and a
    # lab without policies needs no rules. A daemon that dies at start is reported.
    while time.monotonic() < min(deadline, time.monotonic() + 1.0):
        for short, (proc, log) in procs.items():
            if proc.poll() is not None:
                with open(log, errors="replace") as f:
                    tail = f.read()[-1200:]
                raise NetpolError(f"netpolicy on {short} exited with {proc.returncode}:\n{tail}")
        time.sleep(0.1)
    progress("netpolicy: " + ", ".join(f"{k} pid {v[0].pid}" for k, v in sorted(procs.items())))
    return {k: {"pid": v[0].pid, "log": v[1]} for k, v in procs.items()}
