"""`knet lab up` with flannel's two subnet managers: kube (the Nodes' podCIDRs from the node IPAM
controller, the default) against etcd (leases in the lab's etcd).

Labs of each kind are brought up and torn down alternately, round by round, so machine noise hits
both alike; the figure to watch is the kube/etcd ratio of the whole bring-up (what a user waits
for). The parts are the time between the progress lines `lab.api.up` prints: the overlay (etcd:
flannel-py node after node before the control plane; kube: every node at once after it), the
control plane until every Node is Ready with a podCIDR, and the rest.

    python -m bench.lab_up [--rounds N] [--nodes N] [--minimal] [--json]

`--minimal`: the control plane and the overlay only (no kproxy, netpolicy, ingress).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import emit, unique_prefix
from lab import api

MANAGERS = ("etcd", "kube")
# A progress line's first word -> the part it ends (what ran since the line before it).
PARTS = {"ctl:": "kernel (namespaces, links)", "etcd:": "etcd", "overlay": "overlay (flannel-py, every subnet.env)",
         "cni:": "cni conflists", "cni": "cni agents", "apiserver:": "apiserver",
         "controllers:": "controllers, node agents (Nodes Ready with podCIDR)", "kdns:": "dns", "kproxy": "kproxy",
         "netpolicy:": "netpolicy", "ingress:": "ingress"}


def bring_up(manager: str, nodes: int, minimal: bool) -> tuple[float, dict[str, float]]:
    name = unique_prefix("up")[:12]
    marks: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        marks.append((time.monotonic(), msg.split(" ", 1)[0]))

    try:
        api.up(name, nodes=nodes, control_plane=True, subnet_manager=manager, progress=progress,
               proxy_mode=None if minimal else "iptables", network_policy=not minimal, ingress=not minimal)
        total = time.monotonic() - t0
    finally:
        api.down(name)
    parts: dict[str, float] = {}
    last = t0
    for at, word in marks:  # lines of no part (the kubectl hint, ...) count toward the next part's
        part = PARTS.get(word)
        if part:
            parts[part] = parts.get(part, 0.0) + at - last
            last = at
    return total, parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--minimal", action="store_true", help="control plane and overlay only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    totals: dict[str, list[float]] = {m: [] for m in MANAGERS}
    parts: dict[str, dict[str, list[float]]] = {m: {} for m in MANAGERS}
    for r in range(args.rounds):
        for manager in MANAGERS if r % 2 == 0 else MANAGERS[::-1]:
            total, got = bring_up(manager, args.nodes, args.minimal)
            totals[manager].append(total)
            for k, v in got.items():
                parts[manager].setdefault(k, []).append(v)
    median = {m: statistics.median(v) for m, v in totals.items()}
    summary = {"nodes": args.nodes, "rounds": args.rounds, "minimal": args.minimal,
               "total_s": {m: round(v, 2) for m, v in median.items()},
               "kube_over_etcd": round(median["kube"] / median["etcd"], 3),
               "parts_s": {m: {k: round(statistics.median(v), 2) for k, v in p.items()} for m, p in parts.items()}}
    rows = [(f"lab up, {m} subnet manager (median of {args.rounds})", f"{median[m]:.1f} s") for m in MANAGERS]
    rows.append(("kube / etcd", f"{summary['kube_over_etcd']:.2f}"))
    for m in MANAGERS:
        for k, v in summary["parts_s"][m].items():
            rows.append((f"  {m}: {k}", f"{v:.1f} s"))
    emit(rows, summary, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
