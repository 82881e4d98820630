"""knet at cluster size, end to end (issue 14): from the API write to the packet, per proxy mode.

    python -m bench.scale [--modes iptables,nftables,ebpf,userspace] [--sizes 1000,5000,10000]
                          [--large] [--changes 5] [--rest 30] [--json] [--plot FILE.png]

One lab per mode (`kt` + hex, always removed): two nodes, the control plane (etcd, the lab API
server, the controllers, the node agents), kdns, and kproxy in that mode; the backend pod (nginx)
on node2 and the client pod on node1 of bench.proxy_modes. Then, growing the cluster to each
size N in turn, through the API server as any client writes (aiohttp, `--writers` in parallel):
N selector-less Services in namespace `bench`, each with an EndpointSlice whose one endpoint is
the backend pod. Per size:
- objects/s: the create rate of this step's Services + EndpointSlices, client side;
- all programmed: from the last write until the last Service's ClusterIP connects from the client
  pod (the data path then holds all N: kproxy programs in one sync what it has seen);
- change (`--changes` times): a new Service + EndpointSlice (ClusterIP chosen by the client, so a
  prober in the client pod can poll it before the write), timed from the API write to the pod's
  TCP connect succeeding (add), and from the Service's DELETE to the connect failing (delete);
  kdns answering the new name from the client pod (dns), polled the same way;
- at rest: kproxy's CPU (% of one core) over `--rest` seconds with nothing changing, its RSS;
- first byte: connect + first byte of the answer through the ClusterIP vs straight to the pod
  (bench.proxy_modes.first_packet: paired runs, the median of the pairs' ratios);
- the parts: kproxy's own sync histograms (kube-proxy's names) scraped before and after the
  changes: mean sync time and network programming time as kproxy measures them.
The pollers (a small Python loop in the client pod: connect with a 50 ms timeout every 2 ms, or
one DNS query at the cluster DNS Service) stamp CLOCK_MONOTONIC, which every namespace shares
with this process, so a latency is the prober's stamp minus the write's.

Peers: `--modes ...,kube-proxy-iptables,kube-proxy-nftables` runs upstream kube-proxy in that
mode (lab.bringup.kube_proxy) in kproxy's place, measured the same way: its CPU and RSS in the
kproxy columns, its own sync histograms (the same names) for the parts; no targets.

Targets (issue 14; reported, not asserted): >= 500 objects/s, the rate at 10,000 within 1.5x of
the rate at 1,000; at 10,000 services a change reaches the pod in p50 < 300 ms (iptables) and
< 150 ms (ebpf, nftables), growing at most 1.5x from 1,000 to 10,000; kproxy at rest < 2% of a
core and < 300 MB; kdns answers a new name within 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.common import cpu_seconds, rss_mb
from bench.proxy_modes import HTTP_PORT, PEERS, TrafficLab, first_packet
from knet.kube import client as kube_client
from lab.bringup import dns as lab_dns

MODES = ("iptables", "nftables", "ebpf", "userspace")
SIZES = (1000, 5000, 10000)
LARGE = 30000
NAMESPACE = "bench"
ADD_TARGET_MS = {"iptables": 300.0, "ebpf": 150.0, "nftables": 150.0}
GROWTH_TARGET = 1.5
# ClusterIPs the changes choose themselves: in the service range's lower band, which the
# allocator keeps for chosen addresses (as kube-apiserver's: dynamic ones come from the upper
# band while it has room), past the kubernetes (.1) and kube-dns (.10) Services.
CHANGE_IPS = ipaddress.ip_network("10.96.0.128/25")

# The prober in the client pod. stdin: `up IP PORT WAIT`, `down IP PORT WAIT`, `dns NAME SERVER
# WAIT`; each line answered with {"t": monotonic time the condition held, "ok": ..., "tries": n}.
PROBE = r"""
import json, socket, struct, sys, time
def connects(ip, port):
    s = socket.socket()
    s.settimeout(0.05)
    try:
        s.connect((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
def answers(name, server):
    q = struct.pack("!6H", 0x4b4e, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    try:
        s.sendto(q, (server, 53))
        r = s.recv(4096)
        return r[3] & 15 == 0 and struct.unpack("!H", r[6:8])[0] > 0
    except OSError:
        return False
    finally:
        s.close()
print("ready", flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    deadline = time.monotonic() + float(a[-1])
    want, tries = cmd != "down", 0
    while True:
        tries += 1
        got = answers(a[0], a[1]) if cmd == "dns" else connects(a[0], int(a[1]))
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    print(json.dumps({"t": time.monotonic(), "ok": got == want, "tries": tries}), flush=True)
"""


@dataclass
class Target:
    url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool


def target_of(kubeconfig: str) -> Target:
    """URL, bearer token and CA of the lab's admin kubeconfig (a loopback URL: this process is in
    the root namespace), as the kubernetes client reads it."""
    cfg = kube_client.load_configuration(kubeconfig)
    ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else False
    headers = {a["key"]: a["value"] for a in cfg.auth_settings().values() if a["in"] == "header"}
    return Target(cfg.host, headers, ctx)


def service_body(name: str, cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP",
                                       "targetPort": HTTP_PORT}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def slice_body(name: str, pod_ip: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{name}-bench", "labels": {"kubernetes.io/service-name": name,
                                                             "endpointslice.kubernetes.io/managed-by": "bench"}},
            "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [pod_ip], "conditions": {"ready": True}}]}


class Writer:
    """Services and EndpointSlices through the API server's REST paths."""

    def __init__(self, target: Target) -> None:
        self.t = target
        self.services = f"{target.url}/api/v1/namespaces/{NAMESPACE}/services"
        self.slices = f"{target.url}/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"

    async def _post(self, session: Any, url: str, body: dict) -> tuple[int, dict]:
        async with session.post(url, json=body, headers=self.t.headers, ssl=self.t.ssl) as r:
            return r.status, await r.json(content_type=None)

    def create_many(self, first: int, last: int, pod_ip: str, writers: int) -> tuple[float, str]:
        """Services svc-first..svc-(last-1) with their slices; (seconds, last Service's ClusterIP)."""
        import aiohttp  # the lab extra's client, as bench.apiserver

        last_ip: dict[int, str] = {}

        async def worker(session: Any, queue: asyncio.Queue[int]) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                status, svc = await self._post(session, self.services, service_body(f"svc-{i}"))
                if status != 201:
                    raise RuntimeError(f"creating svc-{i}: HTTP {status} {str(svc)[:300]}")
                last_ip[i] = svc["spec"]["clusterIP"]
                status, body = await self._post(session, self.slices, slice_body(f"svc-{i}", pod_ip))
                if status != 201:
                    raise RuntimeError(f"creating svc-{i}'s slice: HTTP {status} {str(body)[:300]}")

        async def run() -> None:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(first, last):
                queue.put_nowait(i)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                await asyncio.gather(*(worker(session, queue) for _ in range(writers)))

        t0 = time.monotonic()
        asyncio.run(run())
        return time.monotonic() - t0, last_ip[last - 1]


class Prober:
    """The polling loop in the client pod (see PROBE)."""

    def __init__(self, tl: TrafficLab) -> None:
        assert tl.lab is not None
        argv = tl.lab.exec_argv("bench-client", [sys.executable, "-S", "-c", PROBE])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def ask(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError("the prober in the client pod exited")
        return json.loads(out)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)






HISTOGRAMS = ("kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_network_programming_duration_seconds")


def kproxy_histograms(tl: TrafficLab) -> dict[str, tuple[float, float]]:
    """(sum, count) of kproxy's sync histograms on node1, read from inside node1's namespace."""
    assert tl.lab is not None
    ip = tl.lab.node("node1")["ip"]  # kproxy's metrics address in the lab
    r = tl.lab.exec("node1", ["curl", "-s", "-m", "5", f"http://{ip}:10249/metrics"], timeout=30)
    out = {}
    for name in HISTOGRAMS:
        s = re.search(rf"^{name}_sum(?:{{[^}}]*}})? ([0-9.e+-]+)$", r.stdout, re.M)
        c = re.search(rf"^{name}_count(?:{{[^}}]*}})? ([0-9.e+-]+)$", r.stdout, re.M)
        if s and c:
            out[name] = (float(s.group(1)), float(c.group(1)))
    return out


def _mean_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], name: str) -> float | None:
    if name not in before or name not in after or after[name][1] == before[name][1]:
        return None
    return round((after[name][0] - before[name][0]) / (after[name][1] - before[name][1]) * 1000, 1)


def _p50(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def measure_changes(tl: TrafficLab, probe: Prober, dns_probe: Prober, count: int, size: int,
                    ips: list[str]) -> dict[str, Any]:
    """`count` Services added and deleted one at a time, each timed to the client pod."""
    from knet.kube import client

    dns_ip = lab_dns.dns_service_ip()
    add, delete, names, failed = [], [], [], 0
    for k in range(count):
        name = f"chg-{size}-{k}"
        ip = ips.pop()
        probe.ask(f"up {ip} {HTTP_PORT} 60")
        dns_probe.ask(f"dns {name}.{NAMESPACE}.svc.cluster.local {dns_ip} 60")
        t0 = time.monotonic()
        client.create(tl.api, "Service", service_body(name, ip), NAMESPACE)
        client.create(tl.api, "EndpointSlice", slice_body(name, tl.pod_ip), NAMESPACE)
        up, answered = probe.answer(), dns_probe.answer()
        failed += (not up["ok"]) + (not answered["ok"])
        if up["ok"]:
            add.append((up["t"] - t0) * 1000)
        if answered["ok"]:
            names.append((answered["t"] - t0) * 1000)
        probe.ask(f"down {ip} {HTTP_PORT} 60")
        t0 = time.monotonic()
        client.delete(tl.api, "Service", name, NAMESPACE)
        client.delete(tl.api, "EndpointSlice", f"{name}-bench", NAMESPACE)
        down = probe.answer()
        failed += not down["ok"]
        if down["ok"]:
            delete.append((down["t"] - t0) * 1000)
    return {"add_p50_ms": _p50(add), "add_max_ms": round(max(add), 1) if add else None,
            "delete_p50_ms": _p50(delete), "dns_p50_ms": _p50(names), "dns_max_ms": round(max(names), 1) if names
            else None, "timed_out": failed}


def run_mode(mode: str, sizes: list[int], args: argparse.Namespace, progress) -> dict[str, Any]:
    from knet.kube import client

    tl = TrafficLab(mode, progress)
    rows: list[dict[str, Any]] = []
    try:
        tl.up()
        assert tl.lab is not None
        info = tl.lab.data()
        kproxy_pid = info["proxy"]["nodes"]["node1"]["pid"]
        client.create(tl.api, "Namespace", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": NAMESPACE}})
        writer = Writer(target_of(info["control_plane"]["kubeconfig"]))
        probe, dns_probe = Prober(tl), Prober(tl)
        ips = [str(a) for a in CHANGE_IPS.hosts()]
        created = 0
        try:
            for n in sizes:
                progress(f"{mode}: growing to {n} services")
                took, last_ip = writer.create_many(created, n, tl.pod_ip, args.writers)
                t_written = time.monotonic()
                rate = round(2 * (n - created) / took, 1)
                created = n
                probe.ask(f"up {last_ip} {HTTP_PORT} 900")
                up = probe.answer()
                programmed = round(up["t"] - t_written, 2) if up["ok"] else None
                time.sleep(2)  # the last syncs settle
                cpu0, t0 = cpu_seconds(kproxy_pid), time.monotonic()
                time.sleep(args.rest)
                rest_cpu = round((cpu_seconds(kproxy_pid) - cpu0) / (time.monotonic() - t0) * 100, 2)
                before = kproxy_histograms(tl)
                changes = measure_changes(tl, probe, dns_probe, args.changes, n, ips)
                after = kproxy_histograms(tl)
                fp = first_packet(tl, args.first_packet)
                row = {"services": n, "objects_per_s": rate, "all_programmed_s": programmed, **changes,
                       "kproxy_rest_cpu_pct": rest_cpu, "kproxy_rss_mb": rss_mb(kproxy_pid),
                       "sync_mean_ms": _mean_ms(before, after, HISTOGRAMS[0]),
                       "programming_mean_ms": _mean_ms(before, after, HISTOGRAMS[1]),
                       "first_byte_ms": fp["median_ms"], "first_byte_ratio_to_direct": fp["ratio_to_direct"],
                       "loadavg": round(os.getloadavg()[0], 1)}
                rows.append(row)
                progress(f"{mode} @ {n}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "services"))
        finally:
            probe.close()
            dns_probe.close()
    finally:
        tl.down()
    return {"mode": mode, "sizes": rows}


def verdicts(result: dict[str, Any]) -> list[str]:
    """The issue's targets against one mode's rows (first and last size)."""
    rows = result["sizes"]
    if not rows:
        return []
    first, last = rows[0], rows[-1]
    mode, out = result["mode"], []

    def ratio(key: str) -> float | None:
        a, b = first.get(key), last.get(key)
        return round(b / a, 2) if a and b else None

    out.append(f"objects/s {last['objects_per_s']} (target >= 500); {first['services']}->{last['services']} "
               f"rate ratio {ratio('objects_per_s')}")
    if mode in ADD_TARGET_MS:
        out.append(f"change p50 {last['add_p50_ms']} ms at {last['services']} (target < {ADD_TARGET_MS[mode]:.0f}); "
                   f"growth {ratio('add_p50_ms')}x (target <= {GROWTH_TARGET})")
    out.append(f"rest CPU {last['kproxy_rest_cpu_pct']}% (target < 2), RSS {last['kproxy_rss_mb']} MB (< 300)")
    out.append(f"kdns new name p50 {last['dns_p50_ms']} ms, max {last['dns_max_ms']} ms (target < 1000)")
    return out


def table(results: list[dict[str, Any]]) -> str:
    cols = [("services", "N"), ("objects_per_s", "obj/s"), ("all_programmed_s", "all s"),
            ("add_p50_ms", "add p50"), ("add_max_ms", "add max"), ("delete_p50_ms", "del p50"),
            ("dns_p50_ms", "dns p50"), ("kproxy_rest_cpu_pct", "rest %cpu"), ("kproxy_rss_mb", "RSS MB"),
            ("sync_mean_ms", "sync ms"), ("programming_mean_ms", "prog ms"), ("first_byte_ratio_to_direct",
                                                                              "fb/direct"), ("loadavg", "load")]
    lines = []
    for r in results:
        lines.append(f"== {r['mode']}")
        lines.append("  ".join(f"{h:>9}" for _, h in cols))
        for row in r["sizes"]:
            lines.append("  ".join(f"{'-' if row.get(k) is None else row[k]!s:>9}" for k, _ in cols))
        lines += [f"   {v}" for v in verdicts(r)]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib  # the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        xs = [row["services"] for row in r["sizes"]]
        a.plot(xs, [row["add_p50_ms"] for row in r["sizes"]], marker="o", label=r["mode"])
        b.plot(xs, [row["kproxy_rest_cpu_pct"] for row in r["sizes"]], marker="o", label=r["mode"])
    a.set(xlabel="services", ylabel="API write -> connect, p50 (ms)", title="one-service change")
    b.set(xlabel="services", ylabel="kproxy CPU at rest (% of a core)", title="at rest")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--large", action="store_true", help=f"also {LARGE} services")
    p.add_argument("--changes", type=int, default=5, help="one-service changes per size")
    p.add_argument("--rest", type=float, default=30.0, help="seconds of kproxy at rest per size")
    p.add_argument("--writers", type=int, default=16, help="parallel API clients while growing")
    p.add_argument("--first-packet", type=int, default=50, help="connections timed to the first byte")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="FILE.png")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (the lab's network namespaces)")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} | ({LARGE} if args.large else set()))
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES + PEERS:
            p.error(f"unknown mode {m!r} (one of {', '.join(MODES + PEERS)})")
    quiet = args.json

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    results = [run_mode(m, sizes, args, progress) for m in modes]
    summary = {"modes": results, "sizes": sizes, "cpus": os.cpu_count()}
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(table(results))
    if args.plot:
        plot(results, args.plot)
    with tempfile.NamedTemporaryFile("w", prefix="knet-bench-scale-", suffix=".json", delete=False) as f:
        json.dump(summary, f)
        progress(f"figures also in {f.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
