"""DNS benchmark: kdns against unbound, same records, same queries, same core, in one run.

A synthetic cluster (ClusterIP services with named ports, headless StatefulSet-style services) is
turned into kdns's record store; the very same records are written as unbound `local-data` (zone
`cluster.local` static, so unknown names are NXDOMAIN, everything else refused: no recursion, no
traffic beyond loopback). Both servers are pinned to one core with taskset, dnsperf to the other,
all on 127.0.0.x loopback addresses. The query mix is A (services, StatefulSet pod names), SRV
(named ports) and NXDOMAIN (search-path expansions and unknown services) over UDP.

Peak throughput: dnsperf with many queries outstanding, rounds interleaved kdns / unbound so that
machine noise hits both alike; the median round counts. Latency: dnsperf rate-limited to half of
kdns's peak (for both servers), every answer's latency recorded (-v), percentiles reported.

    python -m bench.dns [--seconds 6] [--rounds 4] [--json]

Forwarding: names of another zone (served by the same unbound), each asked once, so every query
is a forwarder miss relayed to unbound; kdns's peak next to unbound answering the same kind of
names directly (the same unbound, on the same core: through kdns, both share it), then both at
half of kdns's peak (dnsperf -Q) with every latency recorded, in `rounds` pairs alternating which
goes first: the p99 kdns adds is the median of the pairs' differences (via kdns minus direct).
Then all of it again with unbound moved to dnsperf's core ("apart"): the upstream under the same
conditions in both runs and kdns on a core of its own, as in a cluster, whose upstream resolvers
are other machines (two cores cannot give kdns, the upstream and the load generator one each).

Pod level: glibc's resolver (`getent hosts`, 200 distinct external names in one process) with the
lab's pod resolv.conf (search <ns>.svc.cluster.local svc.cluster.local cluster.local, ndots:5,
bind-mounted in a private mount namespace), against kdns with autopath off and on (a second kdns
child that knows the client's address, 127.0.0.1, as a pod's): the time it takes and how many
queries kdns received (its coredns_dns_requests_total).

CoreDNS beside them (when scripts/install-anchors built it): the same synthetic cluster written
as Services and EndpointSlices into a private etcd + knet-apiserver, CoreDNS's kubernetes plugin
listing it, configured as the tests run it beside kdns (knet_testing.anchors.corefile: the cluster
zone, every other name forwarded to the same unbound and cached), on the servers' core
(GOMAXPROCS=1, every thread pinned): its peak in the same interleaved rounds, its latency at the
same load, its CPU per query, its response codes next to kdns's.

kdns is served by its real `Server` (the daemon's serving code; informers left out since they are
idle during the run), in a child process: `python -m bench.dns --serve-kdns HOST:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from prometheus_client import exposition
from prometheus_client.parser import text_string_to_metric_families

from bench.common import cpu_seconds, emit
from kdns import config, wire
from kdns import metrics as kdns_metrics
from kdns.daemon import parse_args
from kdns.endpoints import Endpoints
from kdns.forward import Upstream
from kdns.records import RecordStore
from kdns.server import Server
from knet.kube.models import EndpointSlice, Pod, Service
from knet_testing import anchors
from knet_testing.kdns import endpoint_slice, query, service
from lab.agent import podenv

KDNS_ADDR, UNBOUND_ADDR, AUTOPATH_ADDR = "127.0.0.61", "127.0.0.62", "127.0.0.63"
POD_NAMES = 200  # distinct external names per pod-level run
FWD_ZONE = "upstream.test"
Z = "cluster.local"


NAMESPACES = ("default", "kube-system", "prod", "staging", "my-ns")


def synthetic_cluster(services: int = 300, headless: int = 30,
                      replicas: int = 3) -> list[tuple[Service, list[EndpointSlice]]]:
    """The same synthetic cluster every time: ClusterIP services with named ports, headless
    StatefulSet-style services with their slices."""
    out: list[tuple[Service, list[EndpointSlice]]] = []
    for i in range(services):
        ns = NAMESPACES[i % len(NAMESPACES)]
        ip = str(ipaddress.IPv4Address("10.96.0.0") + 10 + i)
        ports = [("http", 80, "TCP"), ("metrics", 9100, "TCP")] if i % 2 else [("grpc", 8443, "TCP")]
        out.append((service(f"svc-{i}", ns, ip, ports), []))
    for j in range(headless):
        ns = NAMESPACES[j % len(NAMESPACES)]
        eps = [{"addresses": [f"10.244.{j}.{k + 1}"], "hostname": f"set{j}-{k}"} for k in range(replicas)]
        out.append((service(f"hs-{j}", ns, "None", [("peer", 7000, "TCP")]),
                    [endpoint_slice(f"hs-{j}", ns, eps, [("peer", 7000, "TCP")])]))
    return out


def build_store() -> RecordStore:
    store = RecordStore(serial=1)
    for svc, slices in synthetic_cluster():
        store.update_service(f"{svc.metadata.namespace}/{svc.metadata.name}", svc, slices)
    return store


def query_mix(store: RecordStore, n: int = 2000) -> list[tuple[str, str]]:
    """~50% A, ~25% SRV, ~25% NXDOMAIN, shuffled deterministically."""
    rnd = random.Random(7)
    a_names = [name for name, types in store.names.items() if wire.A in types and name.endswith(Z)]
    srv_names = [name for name, types in store.names.items() if wire.SRV in types]
    out: list[tuple[str, str]] = []
    for i in range(n):
        r = i % 4
        if r in (0, 1):
            out.append((rnd.choice(a_names), "A"))
        elif r == 2:
            out.append((rnd.choice(srv_names), "SRV"))
        else:  # a search-path expansion of an outside name, or a service that does not exist
            base = rnd.choice(["google.com", "api.github.com", "db", "redis"])
            ns = rnd.choice(["default", "prod", "my-ns"])
            out.append((rnd.choice([f"{base}.{ns}.svc.{Z}", f"{base}.svc.{Z}", f"{base}.{Z}"]), "A"))
    rnd.shuffle(out)
    return out


def rr_text(rr: wire.RR) -> str:
    owner, rtype, ttl, data = rr
    t = wire.type_name(rtype)
    if rtype in (wire.A, wire.AAAA):
        value = str(ipaddress.ip_address(data))
    elif rtype in (wire.CNAME, wire.PTR, wire.NS):
        value = data + "."
    elif rtype == wire.SRV:
        value = f"{data[0]} {data[1]} {data[2]} {data[3]}."
    elif rtype == wire.TXT:
        value = " ".join(f'"{s}"' for s in data)
    elif rtype == wire.SOA:
        value = f"{data[0]}. {data[1]}. " + " ".join(str(x) for x in data[2:])
    else:
        raise ValueError(rtype)
    return f"{owner}. {ttl} IN {t} {value}"


def unbound_conf(store: RecordStore, directory: str, port: int, external: list[str] = ()) -> str:
    lines = [
        "server:", f"  interface: {UNBOUND_ADDR}", f"  port: {port}", "  do-daemonize: no", '  username: ""',
        '  chroot: ""', f'  directory: "{directory}"', '  pidfile: ""', "  use-syslog: no", '  logfile: ""',
        "  verbosity: 0", "  num-threads: 1", "  do-ip6: no", "  so-rcvbuf: 4m", "  access-control: 127.0.0.0/8 allow",
        '  module-config: "iterator"', "  do-not-query-localhost: yes",
        # Nothing outside the local data is ever resolved: no recursion, no packets off loopback.
        '  local-zone: "." refuse', f'  local-zone: "{Z}." static',
        # The zone kdns forwards to this unbound in the forwarding measurement (every name a miss).
        f'  local-zone: "{FWD_ZONE}." static',
        f"  local-data: '{FWD_ZONE}. 60 IN SOA ns.{FWD_ZONE}. host.{FWD_ZONE}. 1 3600 600 86400 30'",
    ]
    lines += [f"  local-data: '{name}. 60 IN A 192.0.2.{i % 250 + 1}'" for i, name in enumerate(external)]
    for rrsets in store.names.values():
        for rrs in rrsets.values():
            lines += [f"  local-data: '{rr_text(rr)}'" for rr in rrs]  # single quotes: TXT holds "
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


# --- the kdns child process -----------------------------------------------------------------------

def serve_kdns(address: str, udp_mode: str, upstream: str | None = None, metrics: str | None = None,
               autopath: bool = False) -> None:
    """kdns's real Server with the flags' server block: the cluster records, every other name
    forwarded to `upstream` with the cache on; /metrics on `metrics`. With `autopath`, the
    client's address (127.0.0.1) is a known pod of namespace default (pods verified)."""
    host, _, port = address.rpartition(":")
    argv = ["--listen", f"{host}:53"] + (["--upstream", upstream] if upstream else [])
    argv += ["--pods", "verified", "--autopath"] if autopath else []
    args = parse_args(argv)
    ups = [Upstream.parse(upstream)] if upstream else []
    store = build_store()
    if udp_mode == "thread":
        sys.setswitchinterval(0.0005)  # as the daemon does

    async def main() -> None:
        server = Server(store, config.from_flags(args, ups).blocks, udp_mode=udp_mode)
        if autopath:
            server.pods.update("default/client", Pod.model_validate(
                {"metadata": {"name": "client", "namespace": "default"}, "status": {"podIP": "127.0.0.1"}}))
        if metrics:
            registry = kdns_metrics.registry(kdns_metrics.Collector(server.snapshot))
            def scrape() -> tuple[int, bytes, str]:
                return 200, exposition.generate_latest(registry), exposition.CONTENT_TYPE_LATEST

            Endpoints().apply({metrics: {"/metrics": scrape}})
        gc.collect()
        gc.freeze()  # as the daemon does after its first sync
        # Port 53 too: glibc's resolver (the pod-level figure) knows no other port.
        await server.listen([(host, int(port)), (host, 53)])
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- measuring ------------------------------------------------------------------------------------

def wait_answering(host: str, port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                s.sendto(query(f"dns-version.{Z}", wire.TXT), (host, port))
                if s.recv(4096):
                    return
    raise TimeoutError(f"nothing answers on {host}:{port}")


def dnsperf(cpu: int, host: str, port: int, qfile: str, seconds: float, *, qps: int | None = None,
            verbose: bool = False, outstanding: int = 200, clients: int = 4) -> dict:
    argv = ["taskset", "-c", str(cpu), "dnsperf", "-s", host, "-p", str(port), "-d", qfile, "-l", str(seconds),
            "-q", str(outstanding), "-c", str(clients), "-t", "2"]
    if qps:
        argv += ["-Q", str(qps)]
    if verbose:
        argv.append("-v")
    # Output to a file, not a pipe: at tens of thousands of -v lines a second, a reader would be
    # one more process competing for the cores.
    with tempfile.TemporaryFile("w+") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=seconds + 30)
        f.seek(0)
        out = f.read()

    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(m.group(1)) if m else 0.0

    result = {"qps": num("Queries per second"), "lost": int(num("Queries lost")), "sent": int(num("Queries sent")),
              "avg_ms": num(r"Average Latency \(s\)") * 1000}
    if verbose:
        lat = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("> ")]
        result["latencies"] = lat
        rcodes: dict[str, int] = {}
        for line in out.splitlines():
            if line.startswith("> "):
                rcodes[line.split()[1]] = rcodes.get(line.split()[1], 0) + 1
        result["rcodes"] = rcodes
    return result




def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)


def run(seconds: float, rounds: int, server_cpu: int, client_cpu: int, udp_mode: str = "thread") -> dict:
    store = build_store()
    tmp = tempfile.mkdtemp(prefix="kb-dns-")
    procs: list[subprocess.Popen] = []
    try:
        qfile = os.path.join(tmp, "queries.txt")
        mix = query_mix(store)
        with open(qfile, "w") as f:
            f.writelines(f"{name} {qtype}\n" for name, qtype in mix)
        port = 5353
        external = {(mode, r): [f"p{r}-{mode}-{i}.{FWD_ZONE}" for i in range(POD_NAMES)]
                    for mode in ("off", "on") for r in range(rounds)}
        conf = os.path.join(tmp, "unbound.conf")
        with open(conf, "w") as f:
            f.write(unbound_conf(store, tmp, port, [n for names in external.values() for n in names]))
        metrics = {KDNS_ADDR: f"127.0.0.1:{free_port()}", AUTOPATH_ADDR: f"127.0.0.1:{free_port()}"}
        kdns = subprocess.Popen(["taskset", "-c", str(server_cpu), sys.executable, "-m", "bench.dns", "--serve-kdns",
                                 f"{KDNS_ADDR}:{port}", "--udp-mode", udp_mode, "--upstream", f"{UNBOUND_ADDR}:{port}",
                                 "--metrics", metrics[KDNS_ADDR]], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(kdns)
        unbound = subprocess.Popen(["taskset", "-c", str(server_cpu), "unbound", "-d", "-c", conf],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(unbound)
        autopath = subprocess.Popen(["taskset", "-c", str(server_cpu), sys.executable, "-m", "bench.dns",
                                     "--serve-kdns", f"{AUTOPATH_ADDR}:{port}", "--udp-mode", udp_mode, "--upstream",
                                     f"{UNBOUND_ADDR}:{port}", "--metrics", metrics[AUTOPATH_ADDR], "--autopath"],
                                    stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(autopath)
        wait_answering(KDNS_ADDR, port, kdns)
        wait_answering(UNBOUND_ADDR, port, unbound)
        wait_answering(AUTOPATH_ADDR, port, autopath)
        servers = {"kdns": (KDNS_ADDR, port, kdns), "unbound": (UNBOUND_ADDR, port, unbound)}
        if not anchors.missing("coredns"):
            coredns, started = start_coredns_peer(tmp, f"{UNBOUND_ADDR}:{port}", server_cpu)
            procs += started
            servers["coredns"] = (anchors.HOST, coredns.port, coredns.proc)
        for host, p, _ in servers.values():  # warm-up: kdns's answer cache fills on the first pass
            dnsperf(client_cpu, host, p, qfile, 2)
        peaks: dict[str, list[float]] = {k: [] for k in servers}
        lost: dict[str, int] = {k: 0 for k in servers}
        names = list(servers)
        for i in range(rounds):
            # Back to back, rotating which goes first: drift in the machine's load hits all alike.
            for name in names[i % len(names):] + names[:i % len(names)]:
                host, p, _ = servers[name]
                r = dnsperf(client_cpu, host, p, qfile, seconds)
                peaks[name].append(r["qps"])
                lost[name] += r["lost"]
        kdns_qps, unbound_qps = statistics.median(peaks["kdns"]), statistics.median(peaks["unbound"])
        paired = statistics.median(k / u for k, u in zip(peaks["kdns"], peaks["unbound"], strict=True) if u)
        load = int(kdns_qps / 2)
        lat, cpu_us = {}, {}
        for name, (host, p, proc) in servers.items():
            before = cpu_seconds(proc.pid)
            lat[name] = dnsperf(client_cpu, host, p, qfile, min(seconds, 5), qps=load, verbose=True)
            answered = max(1, len(lat[name]["latencies"]))
            cpu_us[name] = round((cpu_seconds(proc.pid) - before) / answered * 1e6, 2)
        peer = {}
        if "coredns" in servers:
            peer = {"coredns_qps": round(statistics.median(peaks["coredns"])),
                    "coredns_rounds": [round(x) for x in peaks["coredns"]],
                    "kdns_coredns_paired_ratio": round(statistics.median(
                        k / c for k, c in zip(peaks["kdns"], peaks["coredns"], strict=True) if c), 3),
                    "coredns_p50_ms": pct(lat["coredns"]["latencies"], 50),
                    "coredns_p99_ms": pct(lat["coredns"]["latencies"], 99),
                    "coredns_cpu_us_per_query": cpu_us["coredns"], "coredns_rcodes": lat["coredns"]["rcodes"]}
        fwd = forwarding(tmp, client_cpu, port, seconds, rounds, kdns.pid)
        # The same with the upstream away from kdns's core (beside dnsperf, in both runs), as in a
        # cluster, where the upstream resolvers are other machines: kdns has its core to itself.
        pin(unbound.pid, client_cpu)
        apart = forwarding(tmp, client_cpu, port, seconds, rounds, kdns.pid)
        pin(unbound.pid, server_cpu)
        pod = pod_level(tmp, port, rounds, external, metrics)
        return {
            **fwd, **pod, **peer, **{f"apart_{k}": v for k, v in apart.items()},
            "kdns_qps": round(kdns_qps), "unbound_qps": round(unbound_qps),
            "ratio": round(kdns_qps / unbound_qps, 3) if unbound_qps else 0.0,
            "paired_ratio": round(paired, 3),
            "cpu_ratio": round(cpu_us["unbound"] / cpu_us["kdns"], 3) if cpu_us["kdns"] else 0.0,
            "kdns_p99_ms": pct(lat["kdns"]["latencies"], 99),
            "kdns_p50_ms": pct(lat["kdns"]["latencies"], 50), "kdns_p999_ms": pct(lat["kdns"]["latencies"], 99.9),
            "unbound_p99_ms": pct(lat["unbound"]["latencies"], 99),
            "unbound_p50_ms": pct(lat["unbound"]["latencies"], 50),
            "kdns_cpu_us_per_query": cpu_us["kdns"], "unbound_cpu_us_per_query": cpu_us["unbound"],
            "load_qps": load, "latency_samples": {k: len(v["latencies"]) for k, v in lat.items()},
            "rcodes": lat["kdns"]["rcodes"], "unbound_rcodes": lat["unbound"]["rcodes"],
            "kdns_rounds": [round(x) for x in peaks["kdns"]], "unbound_rounds": [round(x) for x in peaks["unbound"]],
            "lost": lost, "records": sum(len(v) for t in store.names.values() for v in t.values()),
            "queries": len(mix), "seconds": seconds, "rounds": rounds, "server_cpu": server_cpu,
            "client_cpu": client_cpu, "udp_mode": udp_mode,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _api_body(obj: Service | EndpointSlice) -> dict:
    body = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = body["metadata"]
    body["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k)}
    if isinstance(obj, Service):
        body["spec"] = {k: body["spec"][k] for k in ("clusterIP", "ports")}
        body.pop("status", None)
    return body


def start_coredns_peer(tmp: str, upstream: str, server_cpu: int) -> tuple[anchors.CoreDns, list[subprocess.Popen]]:
    """CoreDNS against a private etcd + knet-apiserver holding the synthetic cluster (see the
    module's doc); answering on return. Returns it and every process started (the caller stops
    them, also when this raises after starting some)."""
    # Here, not at the top: the kdns children (`--serve-kdns`) import this module, and the
    # kubernetes client's ~1 s import would slow their start on a pinned, busy core.
    from knet.kube import client as kube_client
    from knet_testing import apiserver_env
    from lab.apiserver import auth

    procs: list[subprocess.Popen] = []
    os.makedirs(os.path.join(tmp, "coredns-etcd"))
    etcd = apiserver_env.start_etcd(os.path.join(tmp, "coredns-etcd"))
    procs.append(etcd.proc)
    token = "bench-dns-" + os.urandom(8).hex()
    api = apiserver_env.start_apiserver(os.path.join(tmp, "coredns-api"), etcd.url, "/registry",
                                        f"{token},admin,admin\n")
    procs.append(api.proc)
    assert api.certs is not None
    kubeconfig = auth.write_kubeconfig(os.path.join(tmp, "coredns.kubeconfig"), api.urls[0], "admin", token,
                                       ca_pem=api.certs.ca_pem())
    kube = kube_client.new_api_client(kubeconfig)
    try:
        for ns in NAMESPACES:
            with contextlib.suppress(Exception):  # default and kube-system exist already
                kube_client.create(kube, "Namespace", {"metadata": {"name": ns}})
        for svc, slices in synthetic_cluster():
            kube_client.create(kube, "Service", _api_body(svc), svc.metadata.namespace)
            for sl in slices:
                kube_client.create(kube, "EndpointSlice", _api_body(sl), sl.metadata.namespace)
    finally:
        kube.close()
    # GOMAXPROCS=1: one core's worth of Go, as kdns and unbound run.
    coredns = anchors.start_coredns(os.path.join(tmp, "coredns"), kubeconfig, upstream, env={"GOMAXPROCS": "1"})
    procs.append(coredns.proc)
    for tid in os.listdir(f"/proc/{coredns.proc.pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), {server_cpu})
    return coredns, procs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, cpu: int) -> None:
    """Every thread of a running process onto one core."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), {cpu})


def forwarding(tmp: str, client_cpu: int, port: int, seconds: float, rounds: int, kdns_pid: int) -> dict:
    """Names outside the cluster zone, each asked once: every query is a forwarder miss, sent by
    kdns to the upstream (this unbound). Peaks (median of `rounds`, alternating), then both at
    half of kdns's peak, every latency recorded: what kdns adds is the difference."""
    batch = iter(range(100))

    def names() -> str:  # a fresh set of distinct names for each run (no cache hits, here or there)
        path = os.path.join(tmp, f"forward-{next(batch)}.txt")
        with open(path, "w") as f:
            tag = f"f{random.randrange(10**9)}"
            f.writelines(f"{tag}-{i}.{FWD_ZONE} A\n" for i in range(600_000))
        return path

    via, direct, lost, answered, cpu_peak = [], [], 0, 0, 0.0
    for i in range(rounds):
        for name in (("via", "direct") if i % 2 == 0 else ("direct", "via")):
            host = KDNS_ADDR if name == "via" else UNBOUND_ADDR
            before = cpu_seconds(kdns_pid)
            r = dnsperf(client_cpu, host, port, names(), seconds, outstanding=500)
            (via if name == "via" else direct).append(r["qps"])
            if name == "via":
                lost += r["lost"]
                cpu_peak += cpu_seconds(kdns_pid) - before
                answered += r["sent"] - r["lost"]
    via_qps, direct_qps = statistics.median(via), statistics.median(direct)
    half = int(via_qps / 2)
    # Latency at half of kdns's peak, in pairs (via kdns, then directly, alternating which goes
    # first) so the machine's drift hits both: the added p99 is the median of the pairs'.
    lat: dict[str, list[float]] = {"via": [], "direct": []}
    p99s: dict[str, list[float]] = {"via": [], "direct": []}
    half_lost, rcodes, cpu, cpu_n = 0, {}, 0.0, 0
    for i in range(rounds):
        for name in (("via", "direct") if i % 2 == 0 else ("direct", "via")):
            before = cpu_seconds(kdns_pid)
            r = dnsperf(client_cpu, KDNS_ADDR if name == "via" else UNBOUND_ADDR, port, names(), min(seconds, 5),
                        qps=half, verbose=True)
            lat[name] += r["latencies"]
            p99s[name].append(pct(r["latencies"], 99))
            if name == "via":
                cpu += cpu_seconds(kdns_pid) - before
                cpu_n += len(r["latencies"])
                half_lost += r["lost"]
                for k, v in r["rcodes"].items():
                    rcodes[k] = rcodes.get(k, 0) + v
    added = [round(v - d, 3) for v, d in zip(p99s["via"], p99s["direct"], strict=True)]
    return {"forward_qps": round(via_qps), "upstream_direct_qps": round(direct_qps),
            "forward_ratio": round(via_qps / direct_qps, 3) if direct_qps else 0.0,
            "forward_rounds": [round(x) for x in via], "direct_rounds": [round(x) for x in direct],
            "forward_lost": lost, "forward_half_qps": half, "forward_half_lost": half_lost,
            "forward_half_rcodes": rcodes,
            "forward_p50_ms": pct(lat["via"], 50), "forward_p99_ms": pct(lat["via"], 99),
            "direct_p50_ms": pct(lat["direct"], 50), "direct_p99_ms": pct(lat["direct"], 99),
            "forward_added_p99_ms": statistics.median(added), "forward_added_p99_rounds_ms": added,
            "forward_cpu_us_per_query": round(cpu / max(1, cpu_n) * 1e6, 2),
            "forward_peak_cpu_us_per_query": round(cpu_peak / max(1, answered) * 1e6, 2)}


def pod_level(tmp: str, port: int, rounds: int, external: dict[tuple[str, int], list[str]],
              metrics: dict[str, str]) -> dict:
    """glibc resolving POD_NAMES external names with a pod's resolv.conf, autopath off and on."""
    pod = Pod.model_validate({"metadata": {"name": "client", "namespace": "default"}})
    times: dict[str, list[float]] = {"off": [], "on": []}
    asked: dict[str, list[int]] = {"off": [], "on": []}
    failed = 0
    for r in range(rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            server = KDNS_ADDR if mode == "off" else AUTOPATH_ADDR
            resolv = os.path.join(tmp, f"resolv-{mode}.conf")
            with open(resolv, "w") as f:
                f.write(podenv.resolv_conf(pod, server) or "")
            names = external[(mode, r)]
            before = requests_received(metrics[server])
            t0 = time.monotonic()
            script = f'mount --bind "{resolv}" /etc/resolv.conf && exec getent hosts "$@"'
            out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "getent",
                                  *names], capture_output=True, text=True, timeout=600)
            times[mode].append(time.monotonic() - t0)
            asked[mode].append(round(requests_received(metrics[server]) - before))
            failed += len(names) - len(out.stdout.splitlines())
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"pod_names": POD_NAMES, "pod_seconds_autopath_off": round(off, 3), "pod_seconds_autopath_on": round(on, 3),
            "pod_queries_autopath_off": statistics.median(asked["off"]),
            "pod_queries_autopath_on": statistics.median(asked["on"]), "pod_unresolved": failed,
            "pod_speedup": round(off / on, 2) if on else 0.0}


def requests_received(address: str) -> float:
    """kdns's coredns_dns_requests_total, summed, from its /metrics."""
    with socket.create_connection(tuple(address.rsplit(":", 1)), timeout=5) as c:  # type: ignore[arg-type]
        c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    text = data.split(b"\r\n\r\n", 1)[1].decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "coredns_dns_requests_total")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="length of each peak-throughput run")
    p.add_argument("--rounds", type=int, default=4, help="interleaved kdns/unbound peak runs (median counts)")
    p.add_argument("--server-cpu", type=int, default=(os.cpu_count() or 2) - 1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--udp-mode", choices=["loop", "thread"], default="thread", help="kdns's UDP fast path")
    p.add_argument("--serve-kdns", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--upstream", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--metrics", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--autopath", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_kdns:
        serve_kdns(args.serve_kdns, args.udp_mode, args.upstream, args.metrics, args.autopath)
        return 0
    for tool in ("dnsperf", "unbound", "taskset", "unshare", "getent"):
        if not shutil.which(tool):
            print(f"{tool} missing: run ./scripts/install-deps", file=sys.stderr)
            return 2
    # This process (setup, parsing) stays off the servers' core too.
    os.sched_setaffinity(0, {args.client_cpu})
    load_before = os.getloadavg()[0]
    s = run(args.seconds, args.rounds, args.server_cpu, args.client_cpu, args.udp_mode)
    # Other work on the machine moves every figure here (latency most): say how busy it was.
    s["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    emit([
        ("records / distinct queries", f"{s['records']} / {s['queries']} (A, SRV, NXDOMAIN over UDP)"),
        ("kdns peak qps (median of rounds)", f"{s['kdns_qps']}  {s['kdns_rounds']}"),
        ("unbound peak qps (median of rounds)", f"{s['unbound_qps']}  {s['unbound_rounds']}"),
        ("ratio kdns/unbound (target >= 0.8)", f"{s['ratio']}  (median of per-round ratios {s['paired_ratio']})"),
        (f"latency at {s['load_qps']} qps: kdns p50/p99/p99.9",
         f"{s['kdns_p50_ms']} / {s['kdns_p99_ms']} / {s['kdns_p999_ms']} ms (target p99 < 2 ms)"),
        (f"latency at {s['load_qps']} qps: unbound p50/p99", f"{s['unbound_p50_ms']} / {s['unbound_p99_ms']} ms"),
        ("CPU per answered query: kdns / unbound",
         f"{s['kdns_cpu_us_per_query']} / {s['unbound_cpu_us_per_query']} us at the latency run's load "
         f"(unbound/kdns {s['cpu_ratio']}: the least noise-prone comparison)"),
        ("response codes (kdns, latency run)", ", ".join(f"{k} {v}" for k, v in sorted(s["rcodes"].items()))),
        ("lost queries (peak runs)", ", ".join(f"{k} {v}" for k, v in s["lost"].items())),
        *([("CoreDNS peak qps (median of rounds)", f"{s['coredns_qps']}  {s['coredns_rounds']}: kdns/CoreDNS "
            f"{s['kdns_coredns_paired_ratio']} (median of per-round ratios)"),
           (f"latency at {s['load_qps']} qps: CoreDNS p50/p99", f"{s['coredns_p50_ms']} / {s['coredns_p99_ms']} ms"),
           ("CPU per answered query: CoreDNS", f"{s['coredns_cpu_us_per_query']} us"),
           ("response codes (CoreDNS, latency run)",
            ", ".join(f"{k} {v}" for k, v in sorted(s["coredns_rcodes"].items())))]
          if "coredns_qps" in s else [("CoreDNS", "not built (scripts/install-anchors coredns): no row")]),
        ("forwarding peak, unique names (median of rounds)",
         f"kdns {s['forward_qps']} qps {s['forward_rounds']} vs the upstream directly {s['upstream_direct_qps']} "
         f"{s['direct_rounds']}: ratio {s['forward_ratio']} (target >= 0.3); lost {s['forward_lost']}"),
        (f"forwarding at {s['forward_half_qps']} qps (half of kdns's peak): p50/p99",
         f"via kdns {s['forward_p50_ms']} / {s['forward_p99_ms']} ms, direct {s['direct_p50_ms']} / "
         f"{s['direct_p99_ms']} ms; added p99 {s['forward_added_p99_ms']} ms (median of pairs "
         f"{s['forward_added_p99_rounds_ms']}; target < 1); lost {s['forward_half_lost']}"),
        ("forwarding, the upstream apart from kdns (on dnsperf's core in both runs)",
         f"kdns {s['apart_forward_qps']} qps {s['apart_forward_rounds']} vs directly "
         f"{s['apart_upstream_direct_qps']} {s['apart_direct_rounds']}: ratio {s['apart_forward_ratio']}; "
         f"at {s['apart_forward_half_qps']} qps added p99 {s['apart_forward_added_p99_ms']} ms "
         f"{s['apart_forward_added_p99_rounds_ms']}; lost {s['apart_forward_lost']}/{s['apart_forward_half_lost']}"),
        ("kdns CPU per forwarded query", f"{s['forward_peak_cpu_us_per_query']} us at peak, "
         f"{s['forward_cpu_us_per_query']} us at half load (fewer queries per wake-up)"),
        (f"pod: getent hosts, {s['pod_names']} external names",
         f"autopath off {s['pod_seconds_autopath_off']} s, {s['pod_queries_autopath_off']} queries to kdns; "
         f"on {s['pod_seconds_autopath_on']} s, {s['pod_queries_autopath_on']} queries ({s['pod_speedup']}x); "
         f"unresolved {s['pod_unresolved']}"),
        ("machine load average before / after", f"{s['loadavg_1m'][0]} / {s['loadavg_1m'][1]} (2 cores)"),
    ], s, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
