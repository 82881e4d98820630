"""NetworkPolicy benchmark on a 2-node lab (the reachability-matrix lab of `knet_testing.netpolicy.testbed`).

Measured:
  1. programming time with 10 / 100 / 500 policies over 200 pods (100 of them on the programmed
     node): compile, first (full) apply, and an incremental apply after one policy changed, plus
     the size of the resulting ruleset;
  2. request/response rate between two pods on one node with no policy, with 100 unrelated
     policies installed, and with those plus the server isolated by a policy that allows the
     client: 1-byte ping-pong on one connection (RR) and a new connection per exchange (CRR),
     interleaved round by round; the ratios to "no policy" are the figures to watch (sender and
     receiver are Python threads, so absolute rates are Python's);
  3. time from policy create (API call) to enforcement as the probed matrix sees it, and from
     delete to reopened, through the API server and the `netpolicy` daemons (default settings).

    python -m bench.netpol [--trials N] [--seconds S] [--json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time

from bench.common import emit, unique_prefix
from knet import netns
from knet.kube.models import Namespace, NetworkPolicy, Pod
from knet_testing.netpolicy import matrix, probe
from knet_testing.netpolicy.scenarios import A, Step, np, pods, rule
from knet_testing.netpolicy.testbed import Daemon, MatrixLab, control_plane, matrix_lab, register_pods, stop
from netpolicy.compiler import compile_policies

RR_PORT = 9000


# --- synthetic clusters for programming time -----------------------------------------------------

def synthetic(n_policies: int, seed: int = 7) -> tuple[list[NetworkPolicy], list[Pod], list[Namespace]]:
    """20 namespaces x 10 pods (half on node1), and policies of the usual shapes: default deny,
    allow from an app, from a namespace, from both, ipBlock with except, ports and named ports."""
    rng = random.Random(seed)
    namespaces = [matrix.make_namespace(f"ns{i}", {"team": f"t{i % 4}"}) for i in range(20)]
    pod_list = []
    for i in range(200):
        ns, ip = f"ns{i // 10}", f"10.250.{i // 100}.{i % 100 + 2}"  # not the lab's pod range
        pod_list.append(matrix.make_pod(ns, f"p{i}", ip, "node1" if i % 2 == 0 else "node2",
                                        {"app": f"app{i % 5}", "tier": rng.choice(["web", "db", "cache"])}))
    policies = []
    for i in range(n_policies):
        ns = f"ns{rng.randrange(20)}"
        sel = rng.choice([{}, {"matchLabels": {"app": f"app{rng.randrange(5)}"}},
                          {"matchLabels": {"tier": rng.choice(["web", "db"])}}])
        peer = rng.choice([
            {"podSelector": {"matchLabels": {"app": f"app{rng.randrange(5)}"}}},
            {"namespaceSelector": {"matchLabels": {"team": f"t{rng.randrange(4)}"}}},
            {"namespaceSelector": {"matchLabels": {"team": f"t{rng.randrange(4)}"}},
             "podSelector": {"matchLabels": {"tier": "web"}}},
            {"ipBlock": {"cidr": f"172.{(b := 16 + rng.randrange(16))}.0.0/16",
                         "except": [f"172.{b}.{rng.randrange(256)}.0/24"]}},
        ])
        ports = rng.choice([[], [{"port": 80}], [{"port": 8000, "endPort": 8100}], [{"port": "serve-80-tcp"}],
                            [{"port": 53, "protocol": "UDP"}, {"port": 53}]])
        spec = rule([peer], ports or None)
        types = rng.choice([["Ingress"], ["Ingress", "Egress"]])
        egress = [{"to": [peer], **({"ports": ports} if ports else {})}] if "Egress" in types else None
        policies.append(matrix.policy(np(f"pol{i}", ns=ns, select=sel, ingress=[spec], egress=egress, types=types)))
    return policies, pod_list, namespaces


def programming(ml: MatrixLab, sizes: list[int]) -> dict[int, dict]:
    backend = ml.backends["node1"]
    out = {}
    for n in sizes:
        policies, pod_list, namespaces = synthetic(n)
        t0 = time.perf_counter()
        compiled = compile_policies(policies, pod_list, namespaces, node="node1")
        t1 = time.perf_counter()
        backend.apply(compiled, full=True)
        t2 = time.perf_counter()
        changed = [*policies[:-1], matrix.policy(np("changed", ns="ns0", ingress=[rule([pods(app="app1")])]))]
        t3 = time.perf_counter()
        compiled2 = compile_policies(changed, pod_list, namespaces, node="node1")
        backend.apply(compiled2)
        t4 = time.perf_counter()
        out[n] = {"compile_ms": round((t1 - t0) * 1000, 1), "full_apply_ms": round((t2 - t1) * 1000, 1),
                  "incremental_ms": round((t4 - t3) * 1000, 1), **backend.current.stats()}  # type: ignore[union-attr]
    backend.apply(compile_policies([], [], [], node="node1"), full=True)
    return out


# --- request/response -----------------------------------------------------------------------------

# Server and client are separate processes (one per pod namespace), so they do not share a GIL
# with each other or with this process.
SERVER = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(128)
def handle(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while d := c.recv(1):
            c.sendall(d)
print("ready", flush=True)
while True:
    threading.Thread(target=handle, args=(srv.accept()[0],), daemon=True).start()
"""
CLIENT = """
import socket, struct, sys, time
ip, port, seconds, new = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
def connect():
    s = socket.create_connection((ip, port), timeout=5); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
n, s = 0, None if new else connect()
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    c = connect() if new else s
    c.sendall(b"x"); c.recv(1)
    if new:  # abortive close: no TIME_WAIT, or the client runs out of ports within a minute
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
    n += 1
print(n / seconds)
"""


def rate(client_ns: str, ip: str, seconds: float, new_conn: bool) -> float:
    out = netns.run(client_ns, [sys.executable, "-c", CLIENT, ip, str(RR_PORT), str(seconds), "1" if new_conn else "0"],
                    check=True)
    return float(out.stdout.split()[-1])


def rr(ml: MatrixLab, seconds: float, rounds: int = 9) -> dict:
    server, client = "x/a", "x/c"  # both on node1: the bridge path, no overlay in the way
    unrelated, upods, uns = synthetic(100)
    _, mpods, mns = ml.program(Step(lambda c: []))
    variants = {
        "none": [],
        "unrelated": unrelated,
        "isolated": [*unrelated, matrix.policy(np("rr-allow", select=A, ingress=[rule([pods(pod="c")])]))],
    }
    srv = subprocess.Popen(netns.exec_argv(ml.pods[server][0], [sys.executable, "-c", SERVER, ml.pods[server][1],
                                                                   str(RR_PORT)]), stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    results: dict[str, dict[str, list[float]]] = {v: {"rr": [], "crr": []} for v in variants}
    try:
        for r in range(rounds):
            order = list(variants.items())
            for name, policies in order[r % len(order):] + order[:r % len(order)]:  # rotate: no variant always first
                for node, backend in ml.backends.items():
                    backend.apply(compile_policies(policies, [*upods, *mpods], [*uns, *mns], node=node))
                results[name]["rr"].append(rate(ml.pods[client][0], ml.pods[server][1], seconds, False))
                results[name]["crr"].append(rate(ml.pods[client][0], ml.pods[server][1], seconds, True))
    finally:
        srv.kill()
        srv.wait()
    med = {v: {k: statistics.median(x) for k, x in r.items()} for v, r in results.items()}
    return {"rr_tps": {v: round(m["rr"]) for v, m in med.items()},
            "crr_tps": {v: round(m["crr"]) for v, m in med.items()},
            "rr_ratio_100_unrelated": round(med["unrelated"]["rr"] / med["none"]["rr"], 3),
            "crr_ratio_100_unrelated": round(med["unrelated"]["crr"] / med["none"]["crr"], 3),
            "rr_ratio_isolated": round(med["isolated"]["rr"] / med["none"]["rr"], 3),
            "crr_ratio_isolated": round(med["isolated"]["crr"] / med["none"]["crr"], 3)}


# --- create -> enforced through the API and the daemons ----------------------------------------

def _until(cells: dict, ml: MatrixLab, start: float, limit: float = 15.0) -> float:
    while True:
        got = probe.probe(cells, ml.pods, 0.05)
        if got == cells:
            return time.perf_counter() - start
        if time.perf_counter() - start > limit:
            raise RuntimeError(f"not enforced after {limit}s: {got} != {cells}")


def enforcement(ml: MatrixLab, trials: int) -> dict:
    from knet.kube import client as kube
    from knet.kube.client import new_api_client

    ml.program(Step(lambda c: []))
    blocked = {("y/a", "x/a", 80, "TCP"): False, ("z/b", "x/a", 81, "UDP"): False, ("x/b", "x/a", 80, "TCP"): True}
    reopened = {c: True for c in blocked}
    created, deleted = [], []
    with control_plane() as cp:
        api = new_api_client(cp.kubeconfig)
        register_pods(api, ml)
        daemons = [Daemon.start(cp.kubeconfig, n, ml.node_ns(n), cp.tmp) for n in ml.backends]
        try:
            for d in daemons:
                d.wait_healthy()
            _until(reopened, ml, time.perf_counter())
            for i in range(trials):
                body = matrix.policy(np(f"only-b-{i}", select=A, ingress=[rule([pods(pod="b")])])).to_dict()
                t0 = time.perf_counter()
                kube.create(api, "NetworkPolicy", body, "x")
                created.append(_until(blocked, ml, t0))
                t0 = time.perf_counter()
                kube.delete(api, "NetworkPolicy", f"only-b-{i}", "x")
                deleted.append(_until(reopened, ml, t0))
        finally:
            for d in daemons:
                stop(d.proc)
            for backend in ml.backends.values():
                backend.current = None
    ms = [x * 1000 for x in created]
    return {"create_to_enforced_ms_median": round(statistics.median(ms), 1),
            "create_to_enforced_ms_max": round(max(ms), 1),
            "delete_to_reopened_ms_median": round(statistics.median(deleted) * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.netpol", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5, help="policy create/delete trials")
    p.add_argument("--seconds", type=float, default=0.5, help="per request/response measurement (9 rounds)")
    p.add_argument("--sizes", default="10,100,500", help="policy counts for the programming time")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with matrix_lab(unique_prefix("np")) as ml:
        prog = programming(ml, [int(x) for x in args.sizes.split(",")])
        rates = rr(ml, args.seconds)
        enforce = enforcement(ml, args.trials)
    summary = {**enforce, "programming": prog, **rates}
    rows = [("create -> enforced (median / max)",
             f"{enforce['create_to_enforced_ms_median']} / {enforce['create_to_enforced_ms_max']} ms"),
            ("delete -> reopened (median)", f"{enforce['delete_to_reopened_ms_median']} ms")]
    for n, r in prog.items():
        rows.append((f"{n} policies, 100 local pods",
                     f"compile {r['compile_ms']} ms, full apply {r['full_apply_ms']} ms, "
                     f"incremental {r['incremental_ms']} ms; {r['chains']} chains, {r['sets']} sets, "
                     f"{r['set_elements']} elements"))
    rows.append(("RR tps none / 100 unrelated / isolated",
                 " / ".join(str(rates["rr_tps"][v]) for v in ("none", "unrelated", "isolated"))
                 + f"  (ratio {rates['rr_ratio_100_unrelated']}, {rates['rr_ratio_isolated']})"))
    rows.append(("CRR tps none / 100 unrelated / isolated",
                 " / ".join(str(rates["crr_tps"][v]) for v in ("none", "unrelated", "isolated"))
                 + f"  (ratio {rates['crr_ratio_100_unrelated']}, {rates['crr_ratio_isolated']})"))
    emit(rows, summary, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
