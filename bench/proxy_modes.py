"""kproxy benchmark: the four data paths against direct pod-IP access; first-packet and sync cost by size.

    python -m bench.proxy_modes [--modes iptables,userspace,ebpf,nftables] [--duration S] [--rounds R]
                                [--sizes 10,1000,5000,10000] [--json] [--plot FILE.png]

Peers: `--modes ...,kube-proxy-iptables,kube-proxy-nftables` adds upstream kube-proxy
(lab.bringup.kube_proxy) in that mode as rows beside kproxy's, measured the same way in a lab of
their own; they have no target, and the scale part (which drives kproxy's backends directly) is
"n/a" for them.

Traffic (seed scenario S23, one lab per mode, `kt` + hex, always removed): a 2-node lab with the
control plane and kproxy in that mode. One backend pod on node2 (nginx answering a 3-byte body,
keep-alive without limit, one worker; and a Python UDP echo server), one client pod on node1;
a ClusterIP service with one TCP and one UDP port whose only endpoint is that pod, so "direct"
(the pod IP; on a second port of the same servers, see DIRECT_HTTP_PORT) and "vip" (the
ClusterIP) reach the very same server processes and differ only by the proxy. Every probe runs
inside the client pod (its network namespace and its node's pod cgroup, where the eBPF socket
hooks are); each figure is measured as direct/vip pairs, back to back, `--rounds` times, and the
ratios are medians of the per-pair ratios. Nothing runs in the root namespace but this process,
which talks to the lab API server over loopback, reads /proc and, for the sync figures, drives
the backends from a thread inside a scratch namespace of the lab.
- TCP request/response: wrk over `--connections` keep-alive connections -> requests/s, and the
  p50/p99 latency of a separate single-connection wrk run (the data path's own latency, without
  the queueing of the loaded run).
- New connections: wrk with `Connection: close` (nginx closes after each answer, wrk reconnects)
  -> connections/s, each a full TCP handshake + request + close through the data path.
- UDP request/response: a Python pinger (one process, epoll, 16 connected sockets with 4
  datagrams in flight each; replies carry their send time) -> requests/s and p50/p99 under load.
The load generators are cheaper per request than the servers and the proxies (wrk is C and used
15-25% of a CPU while the packet path, mostly softirq, saturated both; the UDP pinger and echo
server are symmetric Python loops), and the figures compare paths on the same CPUs: ratios, not
absolute rates, are the result. The CPU used meanwhile by processes outside the
lab is measured and printed: on a shared machine it is what disturbs the figures most.

Scale (iptables, nftables, ebpf; userspace has a listener per service, no lookup that grows):
after the traffic figures, node1's kproxy is stopped and the mode's backend is driven directly in
node1's namespace (for ebpf: on node1's pod cgroup, where the client pod is) with generated
ServicePorts — creating 10,000 Services through the lab API server would take longer than the
whole benchmark, and the figures wanted are the data path's. At each size N, N-1 dummy ClusterIP
services (one TCP port, two endpoints each) and the real one (the benchmark service's ClusterIP
and its nginx pod), named to sort last so a linear walk (iptables' KUBE-SERVICES) reaches it
last. Per size:
- first packet: the client pod opens `--first-packet` new connections to the ClusterIP one after
  another, each timed from connect() to the first byte of the answer: median and p99; each is
  paired with one straight to the pod, and the median of the pairs' ratios is what the data path
  adds (raw medians drift with the machine's load over the minutes between sizes; the ratio
  does not, so the growth target is judged on it).
- sync: `full` is a periodic full resync with the N services programmed (the kernel already
  holding them); `change` is one dummy's endpoint replaced, applied as the daemon's incremental
  sync (median of three). Both are the backend's whole sync() call: diffing, rendering and the
  kernel writes.

Targets (reported, not asserted): ratio to direct ebpf and nftables >= 0.95, iptables >= 0.9,
userspace >= 0.3; nftables' and ebpf's first-packet median at the largest size within 1.1x of the
smallest; one change at the largest size < 10% of a full sync, and for nftables < 50 ms.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import statistics
import sys
import textwrap
import threading
import time

from kproxy import backend as backends
from kproxy.model import Config, Endpoint, ServicePort
from lab import api
from lab.bringup import controlplane, kube_proxy, proxy
from lab.net import kernel, topology

MODES = ("iptables", "userspace", "ebpf", "nftables")
PEERS = kube_proxy.MODES  # upstream kube-proxy: rows of their own, no target
TARGETS = {"ebpf": 0.95, "iptables": 0.9, "userspace": 0.3, "nftables": 0.95}
SCALE_MODES = ("iptables", "nftables", "ebpf")  # userspace: no per-packet lookup that grows
CHANGE_TARGET = 0.10
CHANGE_MS_TARGET = {"nftables": 50.0}
FIRST_PACKET_TARGET = {"nftables": 1.1, "ebpf": 1.1}  # largest size's median / smallest's
PAUSE_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.39"
# The service ports, and the ports the same servers also listen on for the direct runs: were
# direct and VIP flows to share the pod's address and port, the client's reused ephemeral ports
# would make a direct flow and a DNATed VIP flow the same reply tuple in the node's conntrack
# table (TIME_WAIT entries live 120 s), and the NAT clash handling would slow the VIP runs down for
# reasons that have nothing to do with the proxy.
HTTP_PORT, UDP_PORT = 80, 9000
DIRECT_HTTP_PORT, DIRECT_UDP_PORT = 8080, 9001

NGINX_CONF = """\
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {run}/tmp;
    proxy_temp_path {run}/tmp; fastcgi_temp_path {run}/tmp; uwsgi_temp_path {run}/tmp; scgi_temp_path {run}/tmp;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen {port} backlog=4096;
        listen {direct_port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

# The UDP echo server of the backend pod (its container command): echo every datagram back, on
# each port given, a thread per port (only one port is in use at a time, so they never compete).
UDP_SERVER = """\
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("", port))
    recv, send = s.recvfrom, s.sendto
    while True:
        data, peer = recv(2048)
        send(data, peer)
threads = [threading.Thread(target=serve, args=(int(p),)) for p in sys.argv[1:]]
for t in threads:
    t.start()
"""

# The UDP pinger, run in the client pod: connected sockets, a fixed window of datagrams in flight
# on each, every reply answered by the next request at once. Each datagram carries its send time
# (perf_counter), so latency costs no bookkeeping. A socket that got nothing for 0.25 s lost its
# window (a datagram dropped somewhere) and gets a fresh one, counted as `lost`.
UDP_CLIENT = """\
import json, select, socket, struct, sys, time
host, port, warm, dur, nsock, win = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:5]), *map(int, sys.argv[5:7])
st = struct.Struct("d")
pack, unpack, now = st.pack, st.unpack, time.perf_counter
ep = select.epoll()
socks, last = {}, {}
for _ in range(nsock):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((host, port))
    s.setblocking(False)
    socks[s.fileno()] = s
    ep.register(s.fileno(), select.EPOLLIN)
t0 = now()
for fd, s in socks.items():
    last[fd] = t0
    for _ in range(win):
        s.send(pack(now()))
start, end = t0 + warm, t0 + warm + dur
lat, count, lost, errors = [], 0, 0, 0
poll = ep.poll
while True:
    t = now()
    if t >= end:
        break
    for fd, _ in poll(0.05):
        s = socks[fd]
        recv, send = s.recv, s.send
        while True:
            try:
                data = recv(64)
            except BlockingIOError:
                break
            except OSError:
                errors += 1
                break
            t = now()
            if t >= start:
                lat.append(t - unpack(data)[0])
            try:
                send(pack(t))
            except OSError:
                errors += 1
        last[fd] = t
    for fd, seen in last.items():
        if t - seen > 0.25:
            lost += win
            last[fd] = t
            for _ in range(win):
                try:
                    socks[fd].send(pack(now()))
                except OSError:
                    errors += 1
lat.sort()
n = len(lat)
pct = lambda p: round(lat[min(n - 1, round(p / 100 * (n - 1)))] * 1000, 3) if n else None
print(json.dumps({"rps": round(n / dur, 1), "p50_ms": pct(50), "p99_ms": pct(99), "lost": lost, "errors": errors}))
"""


# --- the lab side ---------------------------------------------------------------------------------

class TrafficLab:
    """One lab in one proxy mode with the backend pod, the client pod and the service."""

    def __init__(self, mode: str, progress=None) -> None:
        self.mode = mode
        self.name = "kt" + secrets.token_hex(2)
        self.progress = progress or (lambda _m: None)
        self.lab: api.Lab | None = None
        self.api = None

    def up(self) -> None:
        from knet.kube import client

        self.lab = api.up(self.name, nodes=2, control_plane=True, proxy_mode=self.mode)
        kubeconfig = controlplane.kubeconfig_path(self.name)
        controlplane.loopback_only(kubeconfig)  # this process is in the root namespace
        self.api = client.new_api_client(kubeconfig)
        run = os.path.join(self.lab.state_dir, "bench-nginx")
        os.makedirs(os.path.join(run, "tmp"), exist_ok=True)
        os.chmod(run, 0o755)
        with open(os.path.join(run, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(run=run, port=HTTP_PORT, direct_port=DIRECT_HTTP_PORT))
        labels = {"app": "bench-srv"}
        containers = [
            {"name": "nginx", "image": "nginx:1.22",
             "command": ["nginx", "-p", run + "/", "-e", f"{run}/error.log", "-c", f"{run}/nginx.conf",
                         "-g", "daemon off;"],
             "ports": [{"name": "http", "containerPort": HTTP_PORT}],
             "readinessProbe": {"httpGet": {"path": "/", "port": HTTP_PORT}, "periodSeconds": 1}},
            {"name": "udp-echo", "image": "python:3",
             "command": [sys.executable, "-S", "-c", UDP_SERVER, str(UDP_PORT), str(DIRECT_UDP_PORT)],
             "ports": [{"name": "udp", "containerPort": UDP_PORT, "protocol": "UDP"}]},
        ]
        client.create(self.api, "Deployment", {
            "metadata": {"name": "bench-srv"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": "node2"},
                                           "containers": containers}}}}, "default")
        client.create(self.api, "Pod", {"metadata": {"name": "bench-client"}, "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "node1"},
            "containers": [{"name": "c", "image": PAUSE_IMAGE, "args": ["pause"]}]}}, "default")
        svc = client.create(self.api, "Service", {"metadata": {"name": "bench"}, "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                      {"name": "udp", "port": UDP_PORT, "targetPort": "udp", "protocol": "UDP"}]}}, "default")
        self.vip = svc["spec"]["clusterIP"]
        self.pod_ip = self._wait_ready()
        self._wait_vip()

    def _wait_ready(self, wait: float = 60.0) -> str:
        from knet.kube import client

        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pods = client.list_objects(self.api, "Pod", "default")["items"]
            ready = {p["metadata"]["name"]: p for p in pods if any(
                c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))}
            srv = [p for n, p in ready.items() if n.startswith("bench-srv-")]
            if "bench-client" in ready and srv:
                return srv[0]["status"]["podIP"]
            time.sleep(0.3)
        raise RuntimeError(f"lab {self.name}: the benchmark pods did not become ready in {wait:.0f}s")

    def _wait_vip(self, wait: float = 30.0) -> None:
        """Until the service answers through the VIP (endpoints published and synced on node1)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            r = self.exec(["curl", "-s", "-m", "1", f"http://{self.vip}:{HTTP_PORT}/"])
            if r.returncode == 0 and r.stdout.strip() == "ok":
                return
            time.sleep(0.3)
        raise RuntimeError(f"lab {self.name}: the ClusterIP {self.vip} did not answer in {wait:.0f}s")

    def exec(self, argv: list[str], timeout: float = 120.0):
        assert self.lab is not None
        return self.lab.exec("bench-client", argv, timeout=timeout)

    def down(self) -> None:
        if self.api is not None:
            self.api.close()
        api.down(self.name)


class LoadWatch:
    """CPU time used by processes outside the lab (other labs, other benchmarks, builds) between
    two snapshots: every path shares the machine's CPUs, so a figure is only as clean as the
    machine was quiet while it was taken. Kernel threads are left out (the lab's own packets are
    processed in softirq context there); processes that start and end between two snapshots
    are missed, so this is a lower bound."""

    def __init__(self, lab: str) -> None:
        from knet import netns

        self.own_netns = {netns.inode(n) for n in kernel.lab_netns(lab)}
        self.hz = os.sysconf("SC_CLK_TCK")

    def snap(self) -> tuple[float, dict[int, int]]:
        out = {}
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in self.own_netns:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if not f.read(1):
                        continue  # a kernel thread
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                continue
        return time.monotonic(), out

    def cpu_pct(self, a: tuple[float, dict[int, int]], b: tuple[float, dict[int, int]]) -> float:
        """Percent of one CPU used outside the lab between snapshots a and b."""
        ticks = sum(max(0, v - a[1][pid]) for pid, v in b[1].items() if pid in a[1])
        return round(100 * ticks / self.hz / max(1e-6, b[0] - a[0]), 1)


# --- load generators --------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    pcts = {p: re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for p in (50, 99)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if not rps or not all(pcts.values()):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {"rps": float(rps.group(1)),
            **{f"p{p}_ms": round(float(m.group(1)) * _UNITS[m.group(2)], 3) for p, m in pcts.items()},
            "errors": (sum(int(x) for x in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)}


def wrk(tl: TrafficLab, url: str, connections: int, duration: int, close: bool = False) -> dict:
    threads = min(connections, 2)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, duration)}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    r = tl.exec([*argv, url], timeout=duration + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed in lab {tl.name}: {r.stderr or r.stdout}")
    return parse_wrk(r.stdout)


def udp_rr(tl: TrafficLab, host: str, port: int, duration: float, sockets: int = 16, window: int = 4) -> dict:
    r = tl.exec([sys.executable, "-S", "-c", UDP_CLIENT, host, str(port), "0.3", str(duration),
                 str(sockets), str(window)], timeout=duration + 30)
    if r.returncode != 0:
        raise RuntimeError(f"UDP pinger failed in lab {tl.name}: {r.stderr}")
    return json.loads(r.stdout)


def measure_traffic(tl: TrafficLab, args: argparse.Namespace) -> dict:
    """{"direct": {...}, "vip": {...}, "ratios": {...}}: medians over the rounds.

    Each figure is measured as a pair, direct and vip back to back (which goes first alternates),
    and the ratios are the medians of the per-pair ratios: a pair shares the machine's conditions
    of the moment, which matters on a shared machine far more than anything else."""
    hosts = {"direct": (tl.pod_ip, DIRECT_HTTP_PORT, DIRECT_UDP_PORT), "vip": (tl.vip, HTTP_PORT, UDP_PORT)}
    for host, http, udp_port in hosts.values():  # warm up: ARP, caches, the proxy's flows
        wrk(tl, f"http://{host}:{http}/", args.connections, 1)
        udp_rr(tl, host, udp_port, 0.5)

    def rr(key: str) -> dict:
        host, http, _ = hosts[key]
        r = wrk(tl, f"http://{host}:{http}/", args.connections, args.duration)
        return {"rr_rps": r["rps"], "rr_errors": r["errors"], "loaded_p50_ms": r["p50_ms"],
                "loaded_p99_ms": r["p99_ms"]}

    def latency(key: str) -> dict:
        host, http, _ = hosts[key]
        r = wrk(tl, f"http://{host}:{http}/", 1, args.duration)
        return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "lat_errors": r["errors"]}

    def conn(key: str) -> dict:
        host, http, _ = hosts[key]
        r = wrk(tl, f"http://{host}:{http}/", args.connections, args.duration, close=True)
        return {"conn_rate": r["rps"], "conn_errors": r["errors"]}

    def udp(key: str) -> dict:
        host, _, udp_port = hosts[key]
        r = udp_rr(tl, host, udp_port, args.duration)
        return {"udp_rps": r["rps"], "udp_p50_ms": r["p50_ms"], "udp_p99_ms": r["p99_ms"],
                "udp_lost": r["lost"] + r["errors"]}

    kinds = (("rr", rr, "rr_rps"), ("latency", latency, None), ("conn", conn, "conn_rate"), ("udp", udp, "udp_rps"))
    runs: dict[str, list[dict]] = {k: [{} for _ in range(args.rounds)] for k in hosts}
    pair_ratios: dict[str, list[float]] = {kind: [] for kind, _, field in kinds if field}
    watch = LoadWatch(tl.name)
    others: list[float] = []
    retries_left, disturbed = args.retries, 0
    for rnd in range(args.rounds):
        for i, (kind, fn, field) in enumerate(kinds):
            order = list(hosts) if (rnd + i) % 2 == 0 else list(reversed(hosts))
            # A pair taken while other processes were busy is taken again (a bounded number of
            # times per lab, so a machine that never quietens down still finishes); the
            # quietest attempt is kept.
            best: tuple[float, dict[str, dict]] | None = None
            while True:
                before = watch.snap()
                pair = {key: fn(key) for key in order}
                other = watch.cpu_pct(before, watch.snap())
                if best is None or other < best[0]:
                    best = (other, pair)
                if other <= args.max_other_cpu or retries_left <= 0:
                    break
                retries_left -= 1
                tl.progress(f"  {tl.mode:9s} {kind} pair retaken: other processes used {other:.0f}% of a CPU")
            others.append(best[0])
            disturbed += best[0] > args.max_other_cpu
            for key in order:
                runs[key][rnd].update(best[1][key])
            if field:
                pair_ratios[kind].append(_ratio(runs["vip"][rnd][field], runs["direct"][rnd][field]))
        d, v = runs["direct"][rnd], runs["vip"][rnd]
        tl.progress(f"  {tl.mode:9s} round {rnd + 1}: direct/vip {d['rr_rps']:.0f}/{v['rr_rps']:.0f} req/s, "
                    f"{d['conn_rate']:.0f}/{v['conn_rate']:.0f} conn/s, {d['udp_rps']:.0f}/{v['udp_rps']:.0f} udp/s")
    out = {key: _median_run(rs) for key, rs in runs.items()}
    out["ratios"] = {f"ratio_{kind}": round(statistics.median(rs), 3) for kind, rs in pair_ratios.items()}
    out["ratios"].update({f"ratio_{kind}_rounds": rs for kind, rs in pair_ratios.items()})
    out["load"] = {"other_cpu_pct": round(statistics.mean(others), 1), "other_cpu_pct_max": max(others),
                   "disturbed_pairs": disturbed, "pairs": len(others), "retaken": args.retries - retries_left}
    return out


def _median_run(runs: list[dict]) -> dict:
    out = {}
    for field in runs[0]:
        vals = [r[field] for r in runs if r[field] is not None]
        if field.endswith(("errors", "lost")):
            out[field] = sum(vals)
        else:
            out[field] = round(statistics.median(vals), 3) if vals else None
    return out


# --- sync cost ------------------------------------------------------------------------------------

def generated_ports(n: int, avoid: str = "") -> list[ServicePort]:
    """n ClusterIP services (one TCP port, two endpoints on two nodes), as the informers would give
    (`avoid`: a ClusterIP not to use, the real service's)."""
    base_vip = int(ipaddress.IPv4Address("10.100.0.0"))
    base_ep = int(ipaddress.IPv4Address("10.244.64.0"))
    out = []
    for i in range(n + 1):
        vip = str(ipaddress.IPv4Address(base_vip + i))
        if vip == avoid or len(out) == n:
            continue
        eps = tuple(Endpoint(str(ipaddress.IPv4Address(base_ep + 2 * i + j)), 8080, node_name=f"node{j + 1}")
                    for j in range(2))
        out.append(ServicePort("bench", f"svc-{i}", "http", "TCP", 80, (vip,), endpoints=eps))
    return out


def changed(ports: list[ServicePort], index: int, generation: int) -> list[ServicePort]:
    """The same services with one of them moved to a new endpoint (a pod replaced)."""
    sp = ports[index]
    new_ep = Endpoint(f"10.244.{200 + generation % 50}.{1 + index % 250}", 8080, node_name="node2")
    out = list(ports)
    out[index] = ServicePort(sp.namespace, sp.name, sp.port_name, sp.protocol, sp.port, sp.cluster_ips,
                             endpoints=(sp.endpoints[0], new_ep))
    return out


# Runs in the client pod: `count` pairs of new connections, one to the ClusterIP and one straight to
# the pod (which goes first alternates), each timed from connect() to the first byte of the answer;
# prints both lists of times in ms. The pairs share the machine's load of the moment, so the
# VIP/direct ratio is what the data path adds, also on a busy machine.
FIRST_PACKET_CLIENT = """\
import json, socket, sys, time
vip, port, pod, direct_port, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
req = b"GET / HTTP/1.0\\r\\n\\r\\n"
def once(host, p):
    s = socket.socket()
    s.settimeout(3)
    t = time.perf_counter()
    s.connect((host, p))
    s.sendall(req)
    s.recv(1)
    took = (time.perf_counter() - t) * 1000
    s.close()
    return took
out = {"vip": [], "direct": []}
for i in range(count + 20):
    order = [("vip", vip, port), ("direct", pod, direct_port)]
    for key, host, p in (order if i % 2 else order[::-1]):
        out[key].append(once(host, p))
print(json.dumps({k: v[20:] for k, v in out.items()}))
"""


def _pct(times: list[float], p: float) -> float:
    times = sorted(times)
    return round(times[min(len(times) - 1, round(p / 100 * (len(times) - 1)))], 3)


def first_packet(tl: TrafficLab, count: int) -> dict:
    r = tl.exec([sys.executable, "-S", "-c", FIRST_PACKET_CLIENT, tl.vip, str(HTTP_PORT), tl.pod_ip,
                 str(DIRECT_HTTP_PORT), str(count)], timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"first-packet client failed in lab {tl.name}: {r.stderr}")
    times = json.loads(r.stdout)
    vip, direct = times["vip"], times["direct"]
    return {"median_ms": _pct(vip, 50), "p99_ms": _pct(vip, 99), "direct_median_ms": _pct(direct, 50),
            "ratio_to_direct": round(statistics.median(v / d for v, d in zip(vip, direct, strict=True)), 3)}


def measure_scale(tl: TrafficLab, sizes: list[int], count: int, progress) -> dict:
    """First-packet time and sync cost of the mode's backend at each size, driven directly in
    node1's namespace in place of the lab's kproxy there (stopped first)."""
    from knet import netns

    assert tl.lab is not None
    plan = topology.plan(tl.name, 2, overlay="vxlan")  # the plan api.up made (pure data)
    proxy.stop(plan, nodes=["node1"], wait=15)
    node1 = next(n for n in plan.nodes if n.short == "node1")
    cfg = Config(node_name="node1", cluster_cidr=topology.POD_CIDR)
    real = ServicePort("zzz-bench", "real", "http", "TCP", HTTP_PORT, (tl.vip,),
                       endpoints=(Endpoint(tl.pod_ip, HTTP_PORT, node_name="node2"),))
    out: dict[str, dict] = {}
    error: list[BaseException] = []

    def work() -> None:
        # In a thread of its own: it stays in node1's namespace for the whole measurement
        # (iptables-restore, nft and bcc's loader act on the calling thread's namespace).
        try:
            with netns.enter(node1.netns):
                opts = backends.Options(cgroup=kernel.node_cgroup(tl.name, "node1"), external_ifaces=[])
                backend = backends.create(tl.mode, cfg, opts)
                for n in sizes:
                    ports = [*generated_ports(n - 1, avoid=tl.vip), real]
                    backends.sync_all(backend, ports, full=True)  # program them (from the previous size)
                    fp = first_packet(tl, count)
                    fulls = []
                    for _ in range(2):
                        t = time.perf_counter()
                        backends.sync_all(backend, ports, full=True)
                        fulls.append(time.perf_counter() - t)
                    changes = []
                    for g in range(3):
                        if n > 1:
                            ports = changed(ports, (g * 7919) % (n - 1), g)
                        t = time.perf_counter()
                        backends.sync_all(backend, ports, full=False)
                        changes.append(time.perf_counter() - t)
                    # The faster of two full resyncs against the median change: change/full
                    # is, if anything, overstated.
                    full_s, change_s = min(fulls), statistics.median(changes)
                    out[str(n)] = {"first_packet_median_ms": fp["median_ms"], "first_packet_p99_ms": fp["p99_ms"],
                                   "first_packet_direct_median_ms": fp["direct_median_ms"],
                                   "first_packet_ratio_to_direct": fp["ratio_to_direct"],
                                   "full_s": round(full_s, 4), "change_s": round(change_s, 4),
                                   "change_pct_of_full": round(100 * change_s / full_s, 2),
                                   "entries": backend.entries()}
                    progress(f"  {tl.mode:9s} at {n:5d} services: first packet median {fp['median_ms']:.3f} ms "
                             f"p99 {fp['p99_ms']:.3f} ms (direct {fp['direct_median_ms']:.3f} ms, paired ratio "
                             f"{fp['ratio_to_direct']:.3f}); sync full {full_s * 1000:8.1f} ms, "
                             f"one change {change_s * 1000:7.1f} ms")
                if tl.mode == "ebpf":
                    backend.cleanup()  # detach the programs now (the lab's cgroups go with the lab)
        except BaseException as e:  # reported by the caller
            error.append(e)

    t = threading.Thread(target=work, name="scale-bench")
    t.start()
    t.join()
    if error:
        raise error[0]
    return out


# --- the run ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace, progress) -> dict:
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES + PEERS:
            raise SystemExit(f"unknown mode {m!r} (one of {', '.join(MODES + PEERS)})")
    sizes = [int(x) for x in args.sizes.split(",") if x]
    summary: dict = {"modes": {}, "direct": {}, "sync": {}, "load_average": list(os.getloadavg()), "targets": {
        **{f"ratio_{m}": t for m, t in TARGETS.items()}, "change_pct_of_full_at_largest": 100 * CHANGE_TARGET,
        "change_ms_at_largest": CHANGE_MS_TARGET, "first_packet_growth": FIRST_PACKET_TARGET}}
    directs = []
    for mode in modes:
        tl = TrafficLab(mode, progress=progress)
        t0 = time.monotonic()
        try:
            tl.up()
            progress(f"{mode}: lab {tl.name} ready in {time.monotonic() - t0:.0f}s "
                     f"(pod {tl.pod_ip}, ClusterIP {tl.vip})")
            res = measure_traffic(tl, args)
            direct, vip = res["direct"], res["vip"]
            directs.append(direct)
            entry = dict(vip)
            entry["direct"] = direct
            entry.update(res["ratios"])
            entry.update(res["load"])
            entry["target"] = TARGETS.get(mode)
            entry["meets_target"] = (min(entry["ratio_rr"], entry["ratio_conn"]) >= entry["target"]
                                     if entry["target"] else None)
            summary["modes"][mode] = entry
            if mode in SCALE_MODES and sizes:
                sync = measure_scale(tl, sizes, args.first_packet, progress)
                largest, smallest = sync[str(max(sizes))], sync[str(min(sizes))]
                # Growth judged on the paired VIP/direct ratios: the raw medians drift with the
                # machine's load over the minutes between sizes; the ratio does not.
                growth = _ratio(largest["first_packet_ratio_to_direct"], smallest["first_packet_ratio_to_direct"])
                raw_growth = _ratio(largest["first_packet_median_ms"], smallest["first_packet_median_ms"])
                meets = largest["change_s"] < CHANGE_TARGET * largest["full_s"]
                if mode in CHANGE_MS_TARGET:
                    meets = meets and largest["change_s"] * 1000 < CHANGE_MS_TARGET[mode]
                summary["sync"][mode] = {
                    "sizes": sync, "change_pct_of_full_at_largest": largest["change_pct_of_full"],
                    "change_ms_at_largest": round(largest["change_s"] * 1000, 1), "meets_target": meets,
                    "first_packet_growth": growth, "first_packet_raw_growth": raw_growth,
                    "first_packet_meets_target": growth <= FIRST_PACKET_TARGET.get(mode, float("inf"))}
        finally:
            tl.down()
        progress(f"{mode}: done in {time.monotonic() - t0:.0f}s")
    if directs:
        summary["direct"] = _median_run(directs)
        summary["direct"]["note"] = "median of the direct runs of every lab; each mode's ratios use its own lab's"
    summary["settings"] = {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                           "max_other_cpu_pct": args.max_other_cpu, "retries": args.retries,
                           "udp_sockets": 16, "udp_window": 4, "cpus": os.cpu_count(), "nodes": 2,
                           "first_packet_connections": args.first_packet,
                           "sync_driver": "backends driven directly with generated ServicePorts in node1's "
                                          "namespace in place of its kproxy (not through the API server)"}
    summary["load_average_end"] = list(os.getloadavg())
    return summary


def _ratio(a: float | None, b: float | None) -> float:
    return round(a / b, 3) if a and b else 0.0


def table(s: dict) -> str:
    lines = []
    w = max(10, *(len(m) for m in s["modes"]))  # the peers' names are longer than kproxy's modes
    head = (f"{'path':<{w}} {'RR req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'conn/s':>8} {'UDP req/s':>10} "
            f"{'UDP p50':>8} {'UDP p99':>8} {'ratio_rr':>8} {'ratio_conn':>10} {'ratio_udp':>9}  target")
    lines.append(head)
    lines.append("-" * len(head))
    rows = [("direct", s["direct"], None)] if s["direct"] else []
    rows += [(m, e, e) for m, e in s["modes"].items()]
    for name, e, r in rows:
        verdict = "peer" if r and r["target"] is None else (
            f">= {r['target']} {'ok' if r['meets_target'] else 'MISSED'}" if r else "")
        ratios = f"{r['ratio_rr']:>8.3f} {r['ratio_conn']:>10.3f} {r['ratio_udp']:>9.3f}  {verdict}" if r else ""
        lines.append(f"{name:<{w}} {e['rr_rps']:>9.0f} {e['p50_ms']:>7.3f} {e['p99_ms']:>7.3f} {e['conn_rate']:>8.0f} "
                     f"{e['udp_rps']:>10.0f} {e['udp_p50_ms'] or 0:>8.3f} {e['udp_p99_ms'] or 0:>8.3f} {ratios}")
    lines.append("  RR: keep-alive requests/s; p50/p99: one keep-alive connection; UDP p50/p99 under load.")
    lines.append("  ratios: vip/direct, median of the per-round pairs in the mode's own lab (spread below); "
                 "the direct row is the median over the labs.")
    for m, e in s["modes"].items():
        lines.append(f"  {m:<9} per-round ratios min-max: " + ", ".join(
            f"{kind} {min(e[f'ratio_{kind}_rounds']):.2f}-{max(e[f'ratio_{kind}_rounds']):.2f}"
            for kind in ("rr", "conn", "udp")))
    errs = {m: (e["rr_errors"], e["conn_errors"], e["udp_lost"]) for m, e in s["modes"].items()
            if e["rr_errors"] or e["conn_errors"] or e["udp_lost"]}
    if errs:
        lines.append("  errors (rr, conn, udp lost): " + ", ".join(f"{m} {v}" for m, v in errs.items()))
    lines.append(f"  CPU used by other processes on the machine during the kept pairs (mean % of one CPU; pairs "
                 f"above {s['settings']['max_other_cpu_pct']:.0f}% retaken, up to {s['settings']['retries']} times "
                 "per lab): " + ", ".join(
                     f"{m} {e['other_cpu_pct']:.0f}% ({e['disturbed_pairs']}/{e['pairs']} pairs still disturbed)"
                     for m, e in s["modes"].items()))
    if s["sync"]:
        lines.append("")
        lines.append(f"{'scale':<10} {'services':>8} {'1st pkt p50':>11} {'1st pkt p99':>11} {'/direct':>8} "
                     f"{'full ms':>9} {'change ms':>10} {'change/full':>12}")
        for mode, sy in s["sync"].items():
            for n, v in sy["sizes"].items():
                lines.append(f"{mode:<10} {n:>8} {v['first_packet_median_ms']:>11.3f} "
                             f"{v['first_packet_p99_ms']:>11.3f} {v['first_packet_ratio_to_direct']:>8.3f} "
                             f"{v['full_s'] * 1000:>9.1f} "
                             f"{v['change_s'] * 1000:>10.1f} {v['change_pct_of_full']:>11.1f}%")
            ms_target = CHANGE_MS_TARGET.get(mode)
            verdict = "ok" if sy["meets_target"] else "MISSED"
            line = (f"{'':<10} one change at the largest size: {sy['change_ms_at_largest']:.1f} ms, "
                    f"{sy['change_pct_of_full_at_largest']:.1f}% of a full sync "
                    f"(target < {100 * CHANGE_TARGET:.0f}%" + (f" and < {ms_target:.0f} ms" if ms_target else "")
                    + f": {verdict}); first packet largest/smallest {sy['first_packet_growth']:.2f}x "
                    f"(paired ratios; raw medians {sy['first_packet_raw_growth']:.2f}x)")
            if mode in FIRST_PACKET_TARGET:
                fp_verdict = "ok" if sy["first_packet_meets_target"] else "MISSED"
                line += f" (target <= {FIRST_PACKET_TARGET[mode]}: {fp_verdict})"
            lines.append(line)
        lines += [f"{m:<10} n/a: the scale part drives kproxy's backends directly" for m in s["modes"] if m in PEERS]
        lines.append("  (1st pkt: ms from connect() to the first answer byte, new connections from a pod on node1, "
                     "each paired with one straight to the pod: /direct is the median of the pairs' ratios; "
                     "backends driven directly with generated service ports, not through the API server)")
    st = s["settings"]
    lines.append("")
    lines.append(f"({st['rounds']} rounds of {st['duration_s']}s per figure and path; {st['connections']} keep-alive "
                 f"connections for RR and new connections; {st['cpus']} CPUs shared by client, server, proxy and "
                 f"kernel; load average {' '.join(f'{x:.2f}' for x in s['load_average'])} at the start, "
                 f"{' '.join(f'{x:.2f}' for x in s['load_average_end'])} at the end)")
    return "\n".join(lines)


def plot(s: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (["direct"] if s["direct"] else []) + list(s["modes"])
    data = [s["direct"] if n == "direct" else s["modes"][n] for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    ax = axes[0]
    width = 0.27
    xs = range(len(names))
    for i, (field, label) in enumerate((("rr_rps", "TCP RR req/s (keep-alive)"), ("conn_rate", "new conn/s"),
                                        ("udp_rps", "UDP RR req/s"))):
        ax.bar([x + (i - 1) * width for x in xs], [d[field] for d in data], width, label=label)
    ax.set_xticks(list(xs), names)
    ax.set_title("rates (pod on node1 -> ClusterIP, backend on node2)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    ax = axes[1]
    width = 0.2
    for i, (field, label) in enumerate((("p50_ms", "TCP p50"), ("p99_ms", "TCP p99"),
                                        ("udp_p50_ms", "UDP p50 (loaded)"), ("udp_p99_ms", "UDP p99 (loaded)"))):
        ax.bar([x + (i - 1.5) * width for x in xs], [d[field] or 0 for d in data], width, label=label)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("ms")
    ax.set_yscale("log")  # TCP p50 is tens of microseconds, loaded UDP p99 milliseconds
    ax.set_title("latency percentiles (TCP: one connection)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    ax = axes[2]
    for mode, sy in s["sync"].items():
        ns = [int(n) for n in sy["sizes"]]
        ax.plot(ns, [v["full_s"] * 1000 for v in sy["sizes"].values()], "o-", label=f"{mode} full sync")
        ax.plot(ns, [v["change_s"] * 1000 for v in sy["sizes"].values()], "s--", label=f"{mode} one change")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services programmed")
    ax.set_ylabel("ms")
    ax.set_title("sync time")
    if s["sync"]:
        ax.legend(fontsize=8)
    ax = axes[3]
    raw = ax.twinx()
    for mode, sy in s["sync"].items():
        ns = [int(n) for n in sy["sizes"]]
        line, = ax.plot(ns, [v["first_packet_ratio_to_direct"] for v in sy["sizes"].values()], "o-",
                        label=f"{mode} VIP/direct (paired)")
        raw.plot(ns, [v["first_packet_median_ms"] for v in sy["sizes"].values()], ":", color=line.get_color(),
                 label=f"{mode} median ms")
    ax.set_xscale("log")
    ax.set_xlabel("services programmed")
    ax.set_ylabel("connect + first byte, VIP / direct")
    raw.set_ylabel("median ms (dotted)")
    ax.set_title("first packet as services grow (real service last)")
    if s["sync"]:
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=textwrap.dedent(__doc__.split("\n", 4)[-1]))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated proxy modes")
    # Many short pairs rather than a few long runs: back-to-back 1 s and 5 s runs of the same path
    # vary alike (about +-10% on a 2-CPU VM), so more pairs is what narrows the median ratio.
    p.add_argument("--duration", type=int, default=1, help="seconds per measurement (whole seconds: wrk's unit)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of direct/vip pairs (medians are reported)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections of the RR runs")
    p.add_argument("--max-other-cpu", type=float, default=25.0,
                   help="retake a pair when processes outside the lab used more than this %% of a CPU meanwhile")
    p.add_argument("--retries", type=int, default=10, help="pairs retaken at most, per lab")
    p.add_argument("--sizes", default="10,1000,5000,10000",
                   help="service counts of the first-packet and sync measurement ('' skips it)")
    p.add_argument("--first-packet", type=int, default=300, help="timed new connections per size")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="draw rates, latency percentiles and sync times")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.proxy_modes needs root (network namespaces)", file=sys.stderr)
        return 1
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
            return 1
    progress = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    s = run(args, progress)
    if args.plot:
        plot(s, args.plot)
        progress(f"plot written to {args.plot}")
    if args.json:
        json.dump(s, sys.stdout)
        sys.stdout.write("\n")
    else:
        print()
        print(table(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
