"""CNI benchmark: median wall time of ADD+DEL for knet-cni and the reference `bridge` plugin.

Both plugins get the same configuration (only `type` differs) and run as a container runtime
runs them: a fresh process per verb, environment + stdin, in the node's network namespace. Runs
are interleaved so machine noise hits both alike; the ratio is the figure to watch (target <= 3).
knet-cni is measured with its node agent running (the fast path a node normally has) and
without it (the direct, in-process path).

    python -m bench.cni [--iterations N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import emit, median_ms, unique_prefix
from knet import netns

REFERENCE = "/usr/lib/cni/bridge"


def knet_cni_path() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "knet-cni")
    if not os.path.exists(exe):
        exe = shutil.which("knet-cni") or exe
    return exe


def invoke(exe: str, command: str, conf: bytes, container: str, pod_ns: str, extra_env: dict) -> None:
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_NETNS=netns.path(pod_ns),
               CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni", **extra_env)
    proc = subprocess.run([exe], input=conf, env=env, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(exe)} {command} failed: {proc.stdout.decode()}")


def add_del(exe: str, conf: bytes, pod_ns: str, container: str, extra_env: dict) -> float:
    start = time.perf_counter()
    invoke(exe, "ADD", conf, container, pod_ns, extra_env)
    invoke(exe, "DEL", conf, container, pod_ns, extra_env)
    return time.perf_counter() - start


def config(kind: str, name: str, subnet: str, state: str, sock: str) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": name, "type": kind, "bridge": "br" + name[:2] + name[-6:],
        "isGateway": True, "isDefaultGateway": True, "agentSocket": sock,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": state},
    }).encode()


def run(iterations: int) -> dict:
    prefix = unique_prefix("cni")
    node, pod = f"{prefix}-node", f"{prefix}-pod"
    state = tempfile.mkdtemp(prefix="knet-bench-cni-")
    sock = os.path.join(state, "agent.sock")
    knet_exe = knet_cni_path()
    agent_exe = os.path.join(os.path.dirname(knet_exe), "knet-cni-agent")
    confs = {
        "knet": config("knet-cni", "kn" + prefix[-6:], "10.250.0.0/16", state, sock),
        "direct": config("knet-cni", "kd" + prefix[-6:], "10.251.0.0/16", state, sock),
        "reference": config("bridge", "rf" + prefix[-6:], "10.252.0.0/16", state, sock),
    }
    samples: dict[str, list[float]] = {k: [] for k in confs}
    try:
        netns.create(node)
        agent = netns.spawn(node, [agent_exe, "--socket", sock], log_path=os.path.join(state, "agent.log"))
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("knet-cni-agent did not start")
            time.sleep(0.05)
        with netns.enter(node):
            for i in range(iterations + 1):  # the first round warms caches and is dropped
                for kind, conf in confs.items():
                    netns.create(pod)
                    try:
                        exe = REFERENCE if kind == "reference" else knet_exe
                        env = {"KNET_CNI_DIRECT": "1"} if kind == "direct" else {}
                        took = add_del(exe, conf, pod, f"bench-{kind}-{i}", env)
                    finally:
                        netns.delete(pod)
                    if i:
                        samples[kind].append(took)
    finally:
        netns.delete(pod)
        netns.delete(node)
        shutil.rmtree(state, ignore_errors=True)
    knet_ms, ref_ms = median_ms(samples["knet"]), median_ms(samples["reference"])
    return {
        "iterations": iterations,
        "knet_add_del_ms": knet_ms,
        "knet_direct_add_del_ms": median_ms(samples["direct"]),
        "reference_add_del_ms": ref_ms,
        "ratio": round(knet_ms / ref_ms, 2),
        "direct_ratio": round(median_ms(samples["direct"]) / ref_ms, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not os.path.exists(REFERENCE):
        print(f"reference plugin {REFERENCE} missing: run ./scripts/install-deps", file=sys.stderr)
        return 2
    s = run(args.iterations)
    emit([
        ("iterations", str(s["iterations"])),
        ("knet-cni ADD+DEL (agent), median", f"{s['knet_add_del_ms']} ms"),
        ("knet-cni ADD+DEL (direct), median", f"{s['knet_direct_add_del_ms']} ms"),
        ("reference bridge ADD+DEL, median", f"{s['reference_add_del_ms']} ms"),
        ("ratio knet/reference (target <= 3)", f"{s['ratio']}"),
        ("ratio direct/reference", f"{s['direct_ratio']}"),
    ], s, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
