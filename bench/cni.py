"""CNI benchmark: knet-cni (through its agent, and direct) against the reference `bridge` plugin.

Four variants get the same configuration (only `type`, the network name, its subnet and bridge
differ) and run as a container runtime runs them: a fresh process per verb, CNI_* environment +
config on stdin, in the node's network namespace (a scratch one, `kbcni...`, always removed):
`knet` (the native thin executable, via the agent), `knet-py` (the Python thin executable, via the
agent), `direct` (the native executable with no agent at its configured socket: it hands the
request to the Python direct path) and `reference` (bridge + host-local).

- Sequential: per round, one pod per variant, ADD then DEL, in a rotating order so machine noise
  hits all alike; median and p95 of ADD+DEL, ratios to the reference (targets: agent <= 1.5,
  direct <= 5). The first round warms caches and is dropped.
- Concurrent: `--concurrency` pods (30: a kubelet starting a burst), all ADDs released at once,
  then all DELs; adds/s and dels/s per variant (median over `--concurrent-rounds`; target: agent
  adds/s >= the reference's).
- CPU per ADD+DEL (the plugin processes', plus the agent's for knet): what decides the ratios on a
  machine whose CPUs are busy, and the concurrent rates always (a burst is CPU-bound).
- Parts, measured in the same run (wall and CPU medians): interpreter and executable starts, each
  executable's start plus a round trip to the agent, the agent's own time per ADD and DEL (its
  log's took_ms), the direct path's imports, host-local's reserve+release, and with `--ip-masq` the
  masquerade rules' setup+teardown.

    python -m bench.cni [--iterations N] [--concurrency C] [--concurrent-rounds R] [--ip-masq] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import cni
from bench.common import emit, median_ms, percentile_ms, unique_prefix
from cni import datapath, shim
from cni.ipam import host_local_add, host_local_del
from cni.ipam_config import parse_host_local
from cni.ipam_store import Store
from knet import netns

REFERENCE = "/usr/lib/cni/bridge"
BIN = os.path.dirname(sys.executable)
KNET_CNI = os.path.join(BIN, "knet-cni")
KNET_CNI_PY = os.path.join(BIN, "knet-cni-py") if os.path.exists(os.path.join(BIN, "knet-cni-py")) else KNET_CNI
VARIANTS = ("knet", "knet-py", "direct", "reference")
SUBNETS = {"knet": "10.250.0.0/16", "knet-py": "10.249.0.0/16", "direct": "10.251.0.0/16",
           "reference": "10.252.0.0/16"}
EXECUTABLES = {"knet": KNET_CNI, "knet-py": KNET_CNI_PY, "direct": KNET_CNI, "reference": REFERENCE}


def is_native(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


class Bench:
    def __init__(self, ip_masq: bool) -> None:
        self.prefix = unique_prefix("cni")
        self.node = f"{self.prefix}-node"
        self.state = tempfile.mkdtemp(prefix="knet-bench-cni-")
        self.sock = os.path.join(self.state, "agent.sock")
        self.agent_log = os.path.join(self.state, "agent.log")
        self.confs = {v: self._config(v, ip_masq) for v in VARIANTS}
        self.pods = 0

    def _config(self, variant: str, ip_masq: bool) -> bytes:
        name = variant[0] + variant[-1] + self.prefix[-4:]
        return json.dumps({
            "cniVersion": "1.0.0", "name": name, "type": "bridge" if variant == "reference" else "knet-cni",
            "bridge": "br" + name, "isGateway": True, "isDefaultGateway": True, "ipMasq": ip_masq,
            # direct: an agent socket that is never there, so the executable falls back as it would
            # on a node whose agent is not up
            "agentSocket": self.sock if variant != "direct" else os.path.join(self.state, "no-agent.sock"),
            "ipam": {"type": "host-local", "subnet": SUBNETS[variant], "dataDir": os.path.join(self.state, "ipam")},
        }).encode()

    def start(self) -> None:
        netns.create(self.node)
        self.agent = agent = netns.spawn(self.node, [os.path.join(BIN, "knet-cni-agent"), "--socket", self.sock],
                            log_path=self.agent_log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError(f"knet-cni-agent did not start (see {self.agent_log})")
            time.sleep(0.05)

    def close(self) -> None:
        for name in netns.list_names(self.prefix + "-"):
            netns.delete(name)  # the agent goes with its namespace
        shutil.rmtree(self.state, ignore_errors=True)

    def new_pod(self) -> str:
        self.pods += 1
        name = f"{self.prefix}-p{self.pods}"
        netns.create(name)
        return name

    def invoke(self, variant: str, command: str, container: str, pod: str) -> None:
        """One plugin process, from the calling thread (which is in the node's namespace)."""
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_NETNS=netns.path(pod),
                   CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni")
        proc = subprocess.run([EXECUTABLES[variant]], input=self.confs[variant], env=env, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")

    def agent_cpu(self) -> float:
        """Seconds of CPU the agent has used (the namespace exec replaced itself by the agent)."""
        with open(f"/proc/{self.agent.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sequential(self, iterations: int) -> tuple[dict[str, list[float]], dict[str, float]]:
        """ADD+DEL wall times by variant, and the mean CPU per ADD+DEL (plugin processes + agent)."""
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu = dict.fromkeys(VARIANTS, 0.0)
        with netns.enter(self.node):
            for i in range(iterations + 1):  # round 0 warms caches and is dropped
                if i == 1:
                    agent_before = self.agent_cpu()
                for k in range(len(VARIANTS)):
                    variant = VARIANTS[(i + k) % len(VARIANTS)]
                    pod = self.new_pod()
                    try:
                        before = _children_cpu()
                        start = time.perf_counter()
                        self.invoke(variant, "ADD", f"s{i}", pod)
                        self.invoke(variant, "DEL", f"s{i}", pod)
                        took = time.perf_counter() - start
                        used = _children_cpu() - before
                    finally:
                        netns.delete(pod)
                    if i:
                        samples[variant].append(took)
                        cpu[variant] += used
        cpu_ms = {v: round(cpu[v] / iterations * 1000, 1) for v in VARIANTS}
        # the agent served both knet variants
        cpu_ms["knet agent"] = round((self.agent_cpu() - agent_before) / (2 * iterations) * 1000, 1)
        return samples, cpu_ms

    def concurrent(self, variant: str, count: int, round_no: int) -> tuple[float, float]:
        """(adds/s, dels/s) for `count` calls released at once."""
        pods = [self.new_pod() for _ in range(count)]
        try:
            rates = []
            for command in ("ADD", "DEL"):
                rates.append(count / self._burst(
                    count, lambda i, cmd=command: self.invoke(variant, cmd, f"c{round_no}-{i}", pods[i])))
            return rates[0], rates[1]
        finally:
            for pod in pods:
                netns.delete(pod)

    def _burst(self, count: int, call: Callable[[int], None]) -> float:
        """Seconds from releasing `count` threads (each in the node's namespace) to the last one done."""
        ready = threading.Barrier(count + 1)
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            with netns.enter(self.node):
                ready.wait()
                try:
                    call(i)
                except BaseException as e:
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        ready.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - start

    def agent_times(self) -> dict[str, list[float]]:
        """The agent's own time per request (GO to answer), from its log, by command."""
        out: dict[str, list[float]] = {}
        with open(self.agent_log) as f:
            for m in re.finditer(r"command=(\w+) .*? took_ms=([0-9.]+)", f.read()):
                out.setdefault(m.group(1), []).append(float(m.group(2)) / 1000)
        return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(fn: Callable[[], object], n: int, cpu_clock: Callable[[], float] = time.thread_time) -> str:
    """"<wall median> / <CPU median> ms" of n calls (cpu_clock: this thread's, or the children's)."""
    wall, cpu = [], []
    for _ in range(n):
        c, start = cpu_clock(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_clock() - c)
    return f"{median_ms(wall)} / {median_ms(cpu)}"


def _exec(argv: list[str], n: int, env: dict[str, str] | None = None, stdin: bytes = b"",
          check: bool = True) -> str:
    return _timed(lambda: subprocess.run(argv, env=env, input=stdin, capture_output=True, check=check), n,
                  _children_cpu)


def parts(b: Bench, n: int, ip_masq: bool, took: dict[str, list[float]]) -> dict[str, str | float]:
    """Wall / CPU medians in ms ("a / b"), or the agent's own time per request (wall, from its log)."""
    py = os.path.join(BIN, "python3")
    root = os.path.dirname(os.path.dirname(cni.__file__))
    version_env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")}
    # A request the agent answers at once (an unknown command: error 4), to time each executable's
    # start plus one exchange with the agent.
    refused_env = {"CNI_COMMAND": "NONE", "PATH": os.environ.get("PATH", "")}
    out: dict[str, str | float] = {
        "python -I -S start": _exec([py, "-I", "-S", "-c", "pass"], n),
        "bridge start (VERSION)": _exec([REFERENCE], n, version_env),
        "knet-cni-py start (VERSION, answered by itself)": _exec([KNET_CNI_PY], n, version_env),
        "direct path imports (+ start)": _exec(
            [py, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {root!r}); import cni.plugin"], n),
    }
    with netns.enter(b.node):
        for label, exe in (("knet-cni (native)", KNET_CNI), ("knet-cni-py", KNET_CNI_PY)):
            out[f"{label} start + agent round trip"] = _exec([exe], n, refused_env, b.confs["knet"], check=False)
        env = {"CNI_COMMAND": "VERSION"}
        out["agent round trip in-process (VERSION, caller's CPU)"] = _timed(
            lambda: shim.via_agent(b.sock, env, b""), n)
    out["agent ADD, its own wall time (IPAM + netlink + result)"] = median_ms(took.get("ADD", [0.0]))
    out["agent DEL, its own wall time (netlink + IPAM)"] = median_ms(took.get("DEL", [0.0]))
    store_dir = tempfile.mkdtemp(dir=b.state)
    cfg = parse_host_local({"subnet": "10.253.0.0/16"})
    store = Store(store_dir, "parts")

    def reserve_release() -> None:
        host_local_add(cfg, store, "parts", "eth0", [])
        host_local_del(store, "parts", "eth0")

    out["host-local reserve + release (flock, files)"] = _timed(reserve_release, n)
    if ip_masq:
        masq = datapath.masq()
        with netns.enter(b.node):
            out["ipMasq setup + teardown (2 iptables-restore)"] = _timed(
                lambda: (masq.setup("parts", "c", ["10.253.0.9/16"]),
                         masq.teardown("parts", "c", ["10.253.0.9/16"])), n, _children_cpu)
    return out


def run(iterations: int, concurrency: int, concurrent_rounds: int, ip_masq: bool) -> dict:
    load_before = os.getloadavg()
    b = Bench(ip_masq)
    try:
        b.start()
        samples, cpu_ms = b.sequential(iterations)
        took = b.agent_times()  # before the bursts, which would inflate them
        rates: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for r in range(concurrent_rounds):
            for k in range(len(VARIANTS)):
                variant = VARIANTS[(r + k) % len(VARIANTS)]
                rates[variant].append(b.concurrent(variant, concurrency, r))
        part_ms = parts(b, max(10, iterations // 2), ip_masq, took)
    finally:
        b.close()
    med = {v: median_ms(samples[v]) for v in VARIANTS}
    adds = {v: round(statistics.median(a for a, _ in rates[v]), 1) for v in VARIANTS}
    dels = {v: round(statistics.median(d for _, d in rates[v]), 1) for v in VARIANTS}
    return {
        "iterations": iterations,
        "ip_masq": ip_masq,
        "knet_executable": "native" if is_native(KNET_CNI) else "python",
        "knet_add_del_ms": med["knet"],
        "knet_add_del_p95_ms": percentile_ms(samples["knet"], 95),
        "knet_py_add_del_ms": med["knet-py"],
        "knet_py_add_del_p95_ms": percentile_ms(samples["knet-py"], 95),
        "knet_direct_add_del_ms": med["direct"],
        "knet_direct_add_del_p95_ms": percentile_ms(samples["direct"], 95),
        "reference_add_del_ms": med["reference"],
        "reference_add_del_p95_ms": percentile_ms(samples["reference"], 95),
        "ratio": round(med["knet"] / med["reference"], 2),
        "py_ratio": round(med["knet-py"] / med["reference"], 2),
        "direct_ratio": round(med["direct"] / med["reference"], 2),
        "cpu_per_add_del_ms": cpu_ms,
        "concurrency": concurrency,
        "concurrent_adds_per_s": adds,
        "concurrent_dels_per_s": dels,
        "concurrent_add_ratio": round(adds["knet"] / adds["reference"], 2),
        "concurrent_add_py_ratio": round(adds["knet-py"] / adds["reference"], 2),
        "parts_ms": part_ms,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=30)
    p.add_argument("--concurrent-rounds", type=int, default=3)
    p.add_argument("--ip-masq", action="store_true", help="configure ipMasq (masquerade rules per pod)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not os.path.exists(REFERENCE):
        print(f"reference plugin {REFERENCE} missing: run ./scripts/install-deps", file=sys.stderr)
        return 2
    s = run(args.iterations, args.concurrency, args.concurrent_rounds, args.ip_masq)
    rows = [
        ("iterations (ipMasq)", f"{s['iterations']} ({'on' if s['ip_masq'] else 'off'})"),
        (f"ADD+DEL median / p95: knet-cni ({s['knet_executable']}) via agent",
         f"{s['knet_add_del_ms']} / {s['knet_add_del_p95_ms']} ms"),
        ("ADD+DEL median / p95: knet-cni-py via agent", f"{s['knet_py_add_del_ms']} / "
                                                       f"{s['knet_py_add_del_p95_ms']} ms"),
        ("ADD+DEL median / p95: knet-cni direct", f"{s['knet_direct_add_del_ms']} / "
                                                 f"{s['knet_direct_add_del_p95_ms']} ms"),
        ("ADD+DEL median / p95: reference bridge", f"{s['reference_add_del_ms']} / "
                                                  f"{s['reference_add_del_p95_ms']} ms"),
        ("ratio agent / reference (target <= 1.5)", str(s["ratio"])),
        ("ratio agent through knet-cni-py / reference", str(s["py_ratio"])),
        ("ratio direct / reference (target <= 5)", str(s["direct_ratio"])),
        ("CPU per ADD+DEL: knet executable, knet-cni-py; agent", f"{s['cpu_per_add_del_ms']['knet']}, "
         f"{s['cpu_per_add_del_ms']['knet-py']}; {s['cpu_per_add_del_ms']['knet agent']} ms"),
        ("CPU per ADD+DEL: direct / reference", f"{s['cpu_per_add_del_ms']['direct']} / "
                                               f"{s['cpu_per_add_del_ms']['reference']} ms"),
    ]
    for v in VARIANTS:
        rows.append((f"{s['concurrency']} concurrent: {v} ADD/s, DEL/s",
                     f"{s['concurrent_adds_per_s'][v]}, {s['concurrent_dels_per_s'][v]}"))
    rows.append(("concurrent ADD/s agent / reference (target >= 1)", str(s["concurrent_add_ratio"])))
    rows.append(("concurrent ADD/s agent through knet-cni-py / reference", str(s["concurrent_add_py_ratio"])))
    rows += [(f"part (wall / CPU): {k}", f"{v} ms") for k, v in s["parts_ms"].items()]
    rows.append(("load average before / after", f"{s['load_average']['before']} / {s['load_average']['after']}"))
    emit(rows, s, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
