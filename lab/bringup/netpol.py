"""netpolicy in the lab: one daemon per node, in the node's network namespace, enforcing the
NetworkPolicies of the pods on that node (nftables in the node namespace)."""

from __future__ import annotations

import os

from lab.bringup import launch
from lab.errors import LabError
from lab.net import topology

METRICS_PORT = 9641


class NetpolError(LabError):
    pass


def start(p: topology.Plan, kubeconfig: str, progress=print, settle: float = 1.0) -> dict[str, dict]:
    daemons = {n.short: launch.spawn(f"netpolicy on {n.short}", n.netns, [
        launch.binary("netpolicy"), "--kubeconfig", kubeconfig, "--node-name", n.short,
        "--metrics-bind-address", f"{n.ip}:{METRICS_PORT}"], os.path.join(n.dir, "netpolicy.log"), NetpolError,
        keep_mounts=True) for n in p.nodes}
    # Started is enough: the daemon programs nothing before its informers have synced, and a
    # lab without policies needs no rules. A daemon that dies at start is reported.
    launch.settle(daemons.values(), settle)
    progress("netpolicy: " + ", ".join(f"{k} pid {d.pid}" for k, d in sorted(daemons.items())))
    return {k: {"pid": d.pid, "log": d.log} for k, d in daemons.items()}
