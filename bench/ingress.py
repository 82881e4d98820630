"""Ingress benchmark: wrk from the lab's client namespace through knet-ingress, through a
hand-written minimal nginx reverse proxy, and straight to a backend pod, in one run.

    python -m bench.ingress [--duration S] [--connections N] [--threads T] [--rounds R] [--json]

Setup (a 2-node lab, `kt` + hex, always removed): two backend pods on node1, each an nginx
serving a small static file (fast enough not to be the bottleneck); the ingress's nginx (the
configuration knet-ingress generates for one Ingress, access log included) and the reference
nginx both run in node1's namespace with the same worker count and the same upstream keep-alive,
on ports 80 and 8080. The reference logs nothing, so the comparison is conservative. While the
ingress is measured, the controller's access-log reader runs as it does in the daemon (a thread
at lower priority, once a second; its CPU cost is part of the figure). The client namespace gets
a route to node1's pod subnet for the direct measurement.

Rounds are interleaved (direct, then the two proxies back to back in alternating order) and the
median is reported; ratio_to_nginx is the median of the per-round ingress/nginx ratios. Target:
ratio_to_nginx >= 0.8. Also reported: CPU per request of each proxy (its nginx workers; for the
ingress plus the metrics reader), which other load on a shared machine disturbs much less than
throughput.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import sys
import textwrap
import threading
import time

from bench.common import emit
from ingress.accesslog import AccessLogReader, RequestMetrics
from ingress.compiler import Options, Snapshot
from ingress.controller import Controller
from ingress.nginx import Nginx
from ingress.nginxconf import Settings
from knet import metrics, netns
from knet_testing.ingress import endpoint_slice, ingress, path, rule, service
from lab import api

HOST = "bench.test"
BODY = "x" * 512 + "\n"   # a small page, the typical size of an API answer


def nginx_conf(run: str, workers: int, connections: int, http: str) -> str:
    """A whole nginx.conf with everything under `run`; `http`: the http block's own directives."""
    return textwrap.dedent(f"""\
        worker_processes {workers};
        pid {run}/nginx.pid;
        error_log {run}/error.log warn;
        events {{ worker_connections {connections}; }}
        http {{
            access_log off;
            client_body_temp_path {run}/tmp;
            proxy_temp_path {run}/tmp; fastcgi_temp_path {run}/tmp; uwsgi_temp_path {run}/tmp; scgi_temp_path {run}/tmp;
        """) + textwrap.indent(textwrap.dedent(http), "    ") + "}\n"


def backend_conf(run: str) -> str:
    return nginx_conf(run, 1, 4096, f"""\
        keepalive_requests 100000;
        open_file_cache max=16;
        server {{ listen 80; root {run}/www; location / {{ }} }}
        """)


def reference_conf(run: str, backends: list[str], workers: int) -> str:
    """The hand-written minimal reverse proxy the ingress is compared with."""
    upstream = "upstream backends {\n" + "".join(f"    server {b};\n" for b in backends) + "    keepalive 64;\n}\n"
    return nginx_conf(run, workers, 8192, upstream + textwrap.dedent("""\
        server {
            listen 8080;
            location / {
                proxy_pass http://backends;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }
        }
        """))


def start_nginx(ns: str, run: str, conf: str) -> None:
    os.makedirs(f"{run}/tmp", exist_ok=True)
    os.chmod(run, 0o755)
    with open(f"{run}/nginx.conf", "w") as f:
        f.write(conf)
    r = netns.run(ns, ["nginx", "-p", run + "/", "-e", f"{run}/error.log", "-c", f"{run}/nginx.conf"])
    if r.returncode != 0:
        raise RuntimeError(f"nginx in {ns} failed: {r.stderr}")


def stop_nginx(ns: str, run: str) -> None:
    if os.path.exists(f"{run}/nginx.pid"):
        netns.run(ns, ["nginx", "-p", run + "/", "-e", f"{run}/error.log", "-c", f"{run}/nginx.conf", "-s", "stop"])


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rps or not p99:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
            "bad": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def wrk(lab: api.Lab, url: str, args: argparse.Namespace, host: str | None = None,
        duration: float | None = None) -> dict:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{round(duration or args.duration)}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    r = lab.exec("client", [*argv, url], timeout=(duration or args.duration) + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed: {r.stderr or r.stdout}")
    return parse_wrk(r.stdout)


def run(args: argparse.Namespace) -> dict:
    name = "kt" + secrets.token_hex(2)
    lab = api.up(name, nodes=2)
    nginx: Nginx | None = None
    node_ns = lab.netns("node1")
    ref_run = os.path.join(lab.state_dir, "bench-reference")
    try:
        pods = []
        for i in (1, 2):
            pod = lab.add_pod("node1", f"web{i}")
            run_dir = os.path.join(lab.state_dir, f"bench-web{i}")
            os.makedirs(f"{run_dir}/www", exist_ok=True)
            with open(f"{run_dir}/www/index.html", "w") as f:
                f.write(BODY)
            os.chmod(f"{run_dir}/www/index.html", 0o644)
            start_nginx(pod["netns"], run_dir, backend_conf(run_dir))
            pods.append((pod, run_dir))
        ips = [p["ip"] for p, _ in pods]
        node_ip = lab.node("node1")["ip"]
        subnet = lab.node("node1")["pod_subnet"]
        lab.exec("client", ["ip", "route", "add", subnet, "via", node_ip], check=True)

        workers = os.cpu_count() or 1
        settings = Settings(run_dir=os.path.join(lab.state_dir, "bench-ingress"), worker_processes=str(workers))
        nginx = Nginx(settings.run_dir, settings.status_port, netns=node_ns)
        controller = Controller(settings, Options(), nginx)
        snap = Snapshot.of([ingress("bench", rule(HOST, path("/", "web")))], [], [service("web")],
                           [endpoint_slice("web", ips)], [])
        controller.start(snap)
        start_nginx(node_ns, ref_run, reference_conf(ref_run, [f"{ip}:80" for ip in ips], workers))

        reader = AccessLogReader(settings.access_log_path, RequestMetrics(metrics.Registry()).observe,
                                 reopen=nginx.reopen_logs)
        targets = {
            "direct": (f"http://{ips[0]}/", None),
            "nginx": (f"http://{node_ip}:8080/", HOST),
            "ingress": (f"http://{node_ip}/", HOST),
        }
        for url, host in targets.values():     # warm up every path (connections, caches)
            wrk(lab, url, args, host, duration=2)
        results: dict[str, list[dict]] = {k: [] for k in targets}
        pid_files = {"nginx": f"{ref_run}/nginx.pid", "ingress": nginx.pid_file}
        for i in range(args.rounds):
            # direct, then the two proxies back to back in alternating order (ABBA): machine noise
            # drifts, and a pair measured side by side is what the per-round ratio compares.
            order = ["direct", "nginx", "ingress"] if i % 2 == 0 else ["direct", "ingress", "nginx"]
            for key in order:
                url, host = targets[key]
                stop = threading.Event()
                tail = threading.Thread(target=reader.run, args=(stop,), daemon=True)
                pid_file = pid_files.get(key)
                cpu0 = (worker_cpu(pid_file) if pid_file else 0.0, time.process_time())
                if key == "ingress":
                    tail.start()
                r = wrk(lab, url, args, host)
                stop.set()
                if key == "ingress":
                    tail.join()
                if pid_file:
                    # CPU per request (nginx workers, plus the metrics reader for the ingress): far
                    # less sensitive than throughput to whatever else the machine is running.
                    used = worker_cpu(pid_file) - cpu0[0] + (time.process_time() - cpu0[1])
                    r["cpu_us"] = used / max(1.0, r["rps"] * args.duration) * 1e6
                results[key].append(r)
        return summarize(results, args)
    finally:
        if nginx is not None:
            nginx.stop()
        stop_nginx(node_ns, ref_run)
        api.down(name)


def worker_cpu(pid_file: str) -> float:
    """CPU seconds used so far by the worker processes of the nginx master in `pid_file`."""
    with open(pid_file) as f:
        master = int(f.read())
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            total += int(fields[11]) + int(fields[12])   # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def summarize(results: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    out: dict = {}
    for key, runs in results.items():
        out[f"{key}_rps"] = round(statistics.median(r["rps"] for r in runs), 1)
        out[f"{key}_p99_ms"] = round(statistics.median(r["p99_ms"] for r in runs), 2)
        out[f"{key}_errors"] = sum(r["bad"] + r["socket_errors"] for r in runs)
        out[f"{key}_rps_runs"] = [round(r["rps"]) for r in runs]
    # The median of per-round ratios: each round's two proxies ran next to each other.
    ratios = [i["rps"] / n["rps"] for i, n in zip(results["ingress"], results["nginx"], strict=True) if n["rps"]]
    out["ratio_to_nginx"] = round(statistics.median(ratios), 3) if ratios else 0.0
    out["round_ratios"] = [round(r, 3) for r in ratios]
    for key in ("nginx", "ingress"):
        out[f"{key}_cpu_us_per_request"] = round(statistics.median(r["cpu_us"] for r in results[key]), 1)
    # nginx's CPU per request over ours: the efficiency ratio, comparable to ratio_to_nginx.
    out["cpu_ratio_to_nginx"] = round(out["nginx_cpu_us_per_request"] / out["ingress_cpu_us_per_request"], 3)
    out["ratio_to_direct"] = round(out["ingress_rps"] / out["direct_rps"], 3) if out["direct_rps"] else 0.0
    out.update(connections=args.connections, threads=args.threads, duration_s=args.duration, rounds=args.rounds)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (the median is reported)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.ingress needs root (network namespaces)", file=sys.stderr)
        return 1
    s = run(args)
    rows = [("path", "requests/s    p99 ms   errors")]
    for key, label in (("direct", "direct to a pod"), ("nginx", "minimal nginx proxy"), ("ingress", "knet-ingress")):
        rows.append((label, f"{s[key + '_rps']:>10.0f}  {s[key + '_p99_ms']:>7.2f}  {s[key + '_errors']:>7d}"))
    rows.append(("ratio_to_nginx", f"{s['ratio_to_nginx']:.3f}  (target >= 0.8; rounds: {s['round_ratios']})"))
    rows.append(("cpu per request", f"nginx {s['nginx_cpu_us_per_request']} us, knet-ingress "
                                    f"{s['ingress_cpu_us_per_request']} us (ratio {s['cpu_ratio_to_nginx']})"))
    emit(rows, s, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
