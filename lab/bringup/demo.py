"""`knet lab up --demo`: what a newcomer sees first. Three pods (two on node1, one on node2),
pings on one node and across nodes, and a short summary of what just happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: the bring-up sits below lab.api, which imports it
    from lab.api import Lab

PODS = [("node1", "demo-a"), ("node1", "demo-b"), ("node2", "demo-c")]


def run(lab: Lab, out: Callable[[str], None] = print) -> bool:
    if len(lab.nodes) < 2:
        out("demo needs at least 2 nodes (knet lab up --nodes 2 --demo)")
        return False
    made = {}
    for node, pod in PODS:
        t0 = time.monotonic()
        rec = lab.add_pod(node, pod)
        made[pod] = rec
        out(f"pod default/{pod} on {node}: {rec['ip']} (netns {rec['netns']}, "
            f"CNI ADD {(time.monotonic() - t0) * 1000:.0f} ms)")
    checks = [
        ("demo-a", "demo-b", "same node (bridge cni0 on node1)"),
        ("demo-a", "demo-c", "across nodes (node1 -> overlay -> node2)"),
        ("demo-c", "demo-b", "across nodes, the other way"),
    ]
    ok = True
    for src, dst, what in checks:
        r = lab.exec(src, ["ping", "-c", "1", "-W", "2", made[dst]["ip"]])
        rtt = next((w.split("=")[1] for line in r.stdout.splitlines() for w in line.split()
                    if w.startswith("time=")), "?")
        good = r.returncode == 0
        ok &= good
        out(f"  ping {src} ({made[src]['ip']}) -> {dst} ({made[dst]['ip']}): "
            f"{'ok, ' + rtt + ' ms' if good else 'FAILED'}  [{what}]")
    if ok:
        out(f"it works: pods on lab {lab.name} reach each other on one node and across nodes, "
            "with their own addresses.")
    else:
        out("something is broken: see the node logs in " + lab.state_dir)
    out(f"try: knet lab status --name {lab.name} | knet lab exec --name {lab.name} demo-a -- ip addr"
        f" | knet lab down --name {lab.name}")
    return ok
