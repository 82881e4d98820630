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
is a forwarder miss relayed to unbound; reported as kdns's rate next to unbound answering the same
names directly.

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

from bench.common import emit
from kdns import wire
from kdns.records import RecordStore
from knet_testing.kdns import endpoint_slice, query, service

KDNS_ADDR, UNBOUND_ADDR = "127.0.0.61", "127.0.0.62"
FWD_ZONE = "upstream.test"
Z = "cluster.local"


def build_store(services: int = 300, headless: int = 30, replicas: int = 3) -> RecordStore:
    """The same synthetic cluster every time (fixed seed)."""
    store = RecordStore(serial=1)
    rnd = random.Random(42)
    namespaces = ["default", "kube-system", "prod", "staging", "my-ns"]
    for i in range(services):
        ns = namespaces[i % len(namespaces)]
        ip = str(ipaddress.IPv4Address("10.96.0.0") + 10 + i)
        ports = [("http", 80, "TCP"), ("metrics", 9100, "TCP")] if i % 2 else [("grpc", 8443, "TCP")]
        store.update_service(f"{ns}/svc-{i}", service(f"svc-{i}", ns, ip, ports))
    for j in range(headless):
        ns = namespaces[j % len(namespaces)]
        eps = [{"addresses": [f"10.244.{j}.{k + 1}"], "hostname": f"set{j}-{k}"} for k in range(replicas)]
        store.update_service(f"{ns}/hs-{j}", service(f"hs-{j}", ns, "None", [("peer", 7000, "TCP")]),
                             [endpoint_slice(f"hs-{j}", ns, eps, [("peer", 7000, "TCP")])])
    rnd.random()
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


def unbound_conf(store: RecordStore, directory: str, port: int) -> str:
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
    for rrsets in store.names.values():
        for rrs in rrsets.values():
            lines += [f"  local-data: '{rr_text(rr)}'" for rr in rrs]  # single quotes: TXT holds "
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


# --- the kdns child process -----------------------------------------------------------------------

def serve_kdns(address: str, udp_mode: str, upstream: str | None = None) -> None:
    from kdns.forward import Forwarder, Upstream
    from kdns.server import Server
    host, _, port = address.rpartition(":")
    forwarder = Forwarder([Upstream.parse(upstream)]) if upstream else None
    store = build_store()
    if udp_mode == "thread":
        sys.setswitchinterval(0.0005)  # as the daemon does

    async def main() -> None:
        server = Server(store, forwarder, udp_mode=udp_mode)
        gc.collect()
        gc.freeze()  # as the daemon does after its first sync
        await server.listen([(host, int(port))])
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- measuring ------------------------------------------------------------------------------------

def wait_answering(host: str, port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
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


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process: a measure that machine noise barely moves."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        conf = os.path.join(tmp, "unbound.conf")
        with open(conf, "w") as f:
            f.write(unbound_conf(store, tmp, port))
        kdns = subprocess.Popen(["taskset", "-c", str(server_cpu), sys.executable, "-m", "bench.dns", "--serve-kdns",
                                 f"{KDNS_ADDR}:{port}", "--udp-mode", udp_mode, "--upstream", f"{UNBOUND_ADDR}:{port}"],
                                stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(kdns)
        unbound = subprocess.Popen(["taskset", "-c", str(server_cpu), "unbound", "-d", "-c", conf],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(unbound)
        wait_answering(KDNS_ADDR, port, kdns)
        wait_answering(UNBOUND_ADDR, port, unbound)
        servers = {"kdns": KDNS_ADDR, "unbound": UNBOUND_ADDR}
        for host in servers.values():  # warm-up: kdns's answer cache fills on the first pass
            dnsperf(client_cpu, host, port, qfile, 2)
        peaks: dict[str, list[float]] = {k: [] for k in servers}
        lost: dict[str, int] = {k: 0 for k in servers}
        for i in range(rounds):
            # Back to back, alternating which goes first: drift in the machine's load hits both.
            for name in (("kdns", "unbound") if i % 2 == 0 else ("unbound", "kdns")):
                r = dnsperf(client_cpu, servers[name], port, qfile, seconds)
                peaks[name].append(r["qps"])
                lost[name] += r["lost"]
        kdns_qps, unbound_qps = statistics.median(peaks["kdns"]), statistics.median(peaks["unbound"])
        paired = statistics.median(k / u for k, u in zip(peaks["kdns"], peaks["unbound"], strict=True) if u)
        load = int(kdns_qps / 2)
        lat, cpu_us = {}, {}
        for (name, host), proc in zip(servers.items(), procs, strict=True):
            before = cpu_seconds(proc.pid)
            lat[name] = dnsperf(client_cpu, host, port, qfile, min(seconds, 5), qps=load, verbose=True)
            answered = max(1, len(lat[name]["latencies"]))
            cpu_us[name] = round((cpu_seconds(proc.pid) - before) / answered * 1e6, 2)
        fwd = forwarding(tmp, client_cpu, port, seconds)
        return {
            **fwd,
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


def forwarding(tmp: str, client_cpu: int, port: int, seconds: float) -> dict:
    """Names outside the cluster zone, each asked once: every query is a forwarder miss, sent by
    kdns to the upstream (this unbound). Compared with unbound answering the same queries
    directly: the ratio is what forwarding through kdns leaves of the upstream's rate (a Python
    server relaying to a C one: a small fraction; the figure to watch is kdns's own rate)."""
    qfile = os.path.join(tmp, "forward.txt")
    with open(qfile, "w") as f:  # more distinct names than kdns can ask in `seconds`
        f.writelines(f"n{i}.{FWD_ZONE} A\n" for i in range(400_000))
    via = dnsperf(client_cpu, KDNS_ADDR, port, qfile, seconds, outstanding=500)
    direct = dnsperf(client_cpu, UNBOUND_ADDR, port, qfile, seconds, outstanding=500)
    return {"forward_qps": round(via["qps"]), "forward_lost": via["lost"], "upstream_direct_qps": round(direct["qps"]),
            "forward_ratio": round(via["qps"] / direct["qps"], 3) if direct["qps"] else 0.0}


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
    args = p.parse_args(argv)
    if args.serve_kdns:
        serve_kdns(args.serve_kdns, args.udp_mode, args.upstream)
        return 0
    for tool in ("dnsperf", "unbound", "taskset"):
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
        ("lost queries (peak runs)", f"kdns {s['lost']['kdns']}, unbound {s['lost']['unbound']}"),
        ("forwarding: every query an upstream miss",
         f"kdns {s['forward_qps']} qps ({s['forward_lost']} lost) vs unbound answering directly "
         f"{s['upstream_direct_qps']} qps: ratio {s['forward_ratio']}"),
        ("machine load average before / after", f"{s['loadavg_1m'][0]} / {s['loadavg_1m'][1]} (2 cores)"),
    ], s, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
