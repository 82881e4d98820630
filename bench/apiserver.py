"""API server write benchmark: objects created per second through the lab API server's real HTTP
API, as the store grows.

A private etcd and knet-apiserver on 127.0.0.1 (temporary directory, free ports), then a few
concurrent writers (aiohttp, keep-alive, bearer token: what kubectl and the controllers send)
create Services (ClusterIP; every tenth a NodePort) and one EndpointSlice per Service (one
endpoint, `kubernetes.io/service-name` label), while a few watchers (all-namespace watches of
services and endpointslices, as kproxy and kdns hold) read every event. The rate is taken over a
window of objects ending at each checkpoint, so "at 10,000" is the rate while the store holds
about 10,000 objects; the ratio of the first checkpoint's rate to the last's says whether a write
costs more as the store grows.

    python -m bench.apiserver [--counts 1000,10000] [--large] [--writers 8] [--watchers 4] [--json]

Parts: the server's own view (`apiserver_request_duration_seconds` and
`etcd_request_duration_seconds` from its /metrics: mean time per create request and per etcd
call) next to what the client saw; the load average at the end of the run is in the output, since
the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import cpu_seconds, emit, rss_mb

DEFAULT_COUNTS = (1000, 10000)
LARGE_COUNT = 30000


@dataclass
class Target:
    """Where to write: the API server's URL, a bearer token and the CA that signed its certificate
    (None: plain HTTP); optionally its etcd's client URL, whose disk timings are then reported."""
    url: str
    token: str
    ca: str | None = None
    etcd_url: str | None = None


@dataclass
class _Run:
    ssl: ssl.SSLContext | bool  # one context: aiohttp pools connections per context
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid, charged CPU time
    marks: set[int] = field(default_factory=set)  # object counts at which CPU times are taken
    cpu_at: dict[int, dict[str, float]] = field(default_factory=dict)
    done: list[float] = field(default_factory=list)  # completion time of each object, in order
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    events: int = 0


def _service(i: int, nodeport_every: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": f"a{i}"}, "ports": [{"name": "http", "port": 80,
                                                                      "targetPort": 8080}]}
    if nodeport_every and i % nodeport_every == 0:
        spec["type"] = "NodePort"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "labels": {"bench": "1"}},
            "spec": spec}


def _slice(i: int) -> dict[str, Any]:
    ip = f"10.244.{(i >> 8) & 255}.{i & 255}"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"s{i}-abcde", "labels": {"kubernetes.io/service-name": f"s{i}",
                                                           "endpointslice.kubernetes.io/managed-by": "bench"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}


def _ssl(target: Target) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=target.ca) if target.ca else False


def _cpu_times(processes: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in processes.items()}
    out["client"] = time.process_time()
    return out






async def _writer(session: aiohttp.ClientSession, target: Target, ns: str, queue: asyncio.Queue[int],
                  run: _Run, nodeport_every: int, deadline: float) -> None:
    headers = {"Authorization": f"Bearer {target.token}", "Content-Type": "application/json"}
    base = f"{target.url}/api/v1/namespaces/{ns}/services"
    slices = f"{target.url}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
    while time.monotonic() < deadline:
        try:
            i = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        for url, body in ((base, _service(i, nodeport_every)), (slices, _slice(i))):
            t0 = time.monotonic()
            async with session.post(url, json=body, headers=headers, ssl=run.ssl) as resp:
                await resp.read()
                if resp.status != 201:
                    run.errors += 1
                    if run.errors <= 3:
                        print(f"bench.apiserver: create answered {resp.status}: {(await resp.text())[:300]}",
                              file=sys.stderr)
            t1 = time.monotonic()
            run.latencies.append(t1 - t0)
            run.done.append(t1)
            if len(run.done) in run.marks:
                run.cpu_at[len(run.done)] = _cpu_times(run.processes)


async def _watcher(session: aiohttp.ClientSession, target: Target, path: str, run: _Run,
                   started: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {target.token}"}
    async with session.get(f"{target.url}{path}?watch=1&allowWatchBookmarks=true&timeoutSeconds=3600",
                           headers=headers, ssl=run.ssl, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        started.set()
        async for _line in resp.content:
            run.events += 1


async def _metrics(session: aiohttp.ClientSession, target: Target, run: _Run) -> dict[str, float]:
    """Sums and counts of the server's duration histograms (name{labels}_sum / _count)."""
    headers = {"Authorization": f"Bearer {target.token}"}
    async with session.get(f"{target.url}/metrics", headers=headers, ssl=run.ssl) as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for m in re.finditer(r'^(apiserver_request_duration_seconds|etcd_request_duration_seconds)_(sum|count)'
                         r'\{([^}]*)\} ([0-9.e+-]+)$', text, re.M):
        name, part, labels, value = m.groups()
        verb = re.search(r'(?:verb|operation)="([^"]+)"', labels)
        key = f"{name}:{verb.group(1) if verb else ''}:{part}"
        out[key] = out.get(key, 0.0) + float(value)
    return out


async def _etcd_disk(session: aiohttp.ClientSession, target: Target) -> dict[str, float]:
    """etcd's WAL fsync and backend commit histograms (sum, count), if its URL is known."""
    if not target.etcd_url:
        return {}
    async with session.get(f"{target.etcd_url}/metrics") as resp:
        text = await resp.text()
    out = {}
    for m in re.finditer(r"^etcd_disk_(wal_fsync|backend_commit)_duration_seconds_(sum|count) ([0-9.e+-]+)$", text,
                         re.M):
        out[f"etcd_disk:{m.group(1)}:{m.group(2)}"] = float(m.group(3))
    return out


def _mean_ms(after: dict[str, float], before: dict[str, float], prefix: str) -> float | None:
    s = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix) and k.endswith(":sum"))
    n = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix) and k.endswith(":count"))
    return round(s / n * 1000, 2) if n else None


async def _measure(target: Target, counts: tuple[int, ...], window: int, writers: int, watchers: int,
                   namespace: str, nodeport_every: int, max_seconds: float,
                   processes: dict[str, int]) -> dict[str, Any]:
    run = _Run(_ssl(target), processes, {m for c in counts for m in (c - window, c) if m > 0})
    connector = aiohttp.TCPConnector(limit=writers + watchers + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": f"Bearer {target.token}"}
        async with session.post(f"{target.url}/api/v1/namespaces", json={"metadata": {"name": namespace}},
                                headers=headers, ssl=run.ssl) as resp:
            if resp.status not in (201, 409):
                raise RuntimeError(f"namespace {namespace}: {resp.status} {await resp.text()}")
        watch_tasks = []
        for i in range(watchers):
            started = asyncio.Event()
            path = "/api/v1/services" if i % 2 == 0 else "/apis/discovery.k8s.io/v1/endpointslices"
            watch_tasks.append(asyncio.create_task(_watcher(session, target, path, run, started)))
            await asyncio.wait_for(started.wait(), 30)
        before = await _metrics(session, target, run) | await _etcd_disk(session, target)
        cpu_before = run.cpu_at[0] = _cpu_times(processes)
        queue: asyncio.Queue[int] = asyncio.Queue()
        total = max(counts)
        for i in range((total + 1) // 2):  # two objects per index: a Service and its slice
            queue.put_nowait(i)
        t_start = time.monotonic()
        deadline = t_start + max_seconds
        await asyncio.gather(*(_writer(session, target, namespace, queue, run, nodeport_every, deadline)
                               for _ in range(writers)))
        elapsed = time.monotonic() - t_start
        cpu_end = _cpu_times(processes)
        rss = {name: rss_mb(pid) for name, pid in processes.items()}
        cpu = {name: cpu_end[name] - cpu_before[name] for name in cpu_end}
        after = await _metrics(session, target, run) | await _etcd_disk(session, target)
        settle = time.monotonic() + 10
        want_events = len(run.done) * watchers // 2
        while run.events < want_events and time.monotonic() < settle:
            await asyncio.sleep(0.1)  # the watchers drain what is still on its way
        for t in watch_tasks:
            t.cancel()
        for t in watch_tasks:
            with contextlib.suppress(BaseException):
                await t
    rates: dict[str, float | None] = {}
    cpu_at: dict[str, dict[str, float]] = {}  # CPU ms per object in each window, per process
    for c in counts:
        lo = max(0, c - window)
        if c <= len(run.done):
            t0 = run.done[lo - 1] if lo else t_start
            rates[str(c)] = round((c - lo) / (run.done[c - 1] - t0), 1)
            a, b = run.cpu_at.get(lo), run.cpu_at.get(c)
            if a is not None and b is not None:
                cpu_at[str(c)] = {name: round((b[name] - a[name]) / (c - lo) * 1000, 3) for name in b}
        else:
            rates[str(c)] = None
    first, last = rates[str(counts[0])], rates[str(counts[-1])]
    lat = sorted(run.latencies)
    return {
        "objects_created": len(run.done), "errors": run.errors, "seconds": round(elapsed, 1),
        "overall_rate": round(len(run.done) / elapsed, 1) if elapsed else None,
        "rates": rates, "window": window,
        "ratio_first_to_last": round(first / last, 2) if first and last else None,
        "client_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "client_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
        "server_create_ms": _mean_ms(after, before, "apiserver_request_duration_seconds:POST"),
        "etcd_call_ms": _mean_ms(after, before, "etcd_request_duration_seconds:"),
        "etcd_wal_fsync_ms": _mean_ms(after, before, "etcd_disk:wal_fsync"),
        "etcd_wal_fsyncs_per_object": round((after.get("etcd_disk:wal_fsync:count", 0)
                                             - before.get("etcd_disk:wal_fsync:count", 0)) / len(run.done), 3)
        if run.done else None,
        # CPU per object, per process: what the rate would be on an idle machine follows from it
        # (2 cores / the sum), whatever else the shared machine was doing during the run.
        "cpu_ms_per_object": {name: round(sec / len(run.done) * 1000, 3) for name, sec in cpu.items()}
        if run.done else {},
        "cpu_ms_per_object_at": cpu_at,
        "rss_mb_at_end": rss,
        "idle_estimate": round(2000 / sum(v / len(run.done) * 1000 for v in cpu.values())) if run.done else None,
        "writers": writers, "watchers": watchers, "watch_events": run.events,
        "watch_events_expected": len(run.done) * watchers // 2,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def measure_create_rate(target: Target, counts: tuple[int, ...] = DEFAULT_COUNTS, *, window: int = 1000,
                        writers: int = 8, watchers: int = 4, namespace: str = "bench", nodeport_every: int = 10,
                        max_seconds: float = 900.0, processes: dict[str, int] | None = None) -> dict[str, Any]:
    """Create Services and EndpointSlices (half each) through `target` until max(counts) objects
    exist (or `max_seconds` pass); the objects/s over the `window` objects ending at each count.
    `processes` (name -> pid, e.g. the API server and etcd) are charged their CPU time per object.
    Returns a dict (see `_measure`): rates per count, their ratio, client latencies, the server's
    mean create and etcd times, CPU per object, watch events seen, load average."""
    return asyncio.run(_measure(target, tuple(sorted(counts)), window, writers, watchers, namespace,
                                nodeport_every, max_seconds, dict(processes or {})))


def _local_server(tmp: str) -> tuple[Target, list[Any]]:
    """etcd + knet-apiserver on loopback under `tmp`; (target, processes to stop)."""
    from knet_testing.apiserver_env import start_apiserver, start_etcd, stop

    etcd = start_etcd(tmp)
    try:
        token = "bench-admin-token"
        srv = start_apiserver(os.path.join(tmp, "apiserver"), etcd.url, "/registry", f"{token},admin,admin\n")
    except BaseException:
        stop(etcd.proc)
        raise
    assert srv.certs is not None
    return Target(srv.urls[0], token, srv.certs.ca_cert, etcd.url), [srv.proc, etcd.proc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.apiserver", description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)),
                   help="checkpoints: store sizes (objects) at which the rate is taken")
    p.add_argument("--large", action="store_true", help=f"also at {LARGE_COUNT} objects")
    p.add_argument("--window", type=int, default=1000, help="objects per rate window")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--watchers", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop writing after this long")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    counts = tuple(int(c) for c in args.counts.split(",") if c.strip()) + ((LARGE_COUNT,) if args.large else ())
    from knet_testing.apiserver_env import stop

    tmp = tempfile.mkdtemp(prefix="knet-bench-apiserver-")
    procs: list[Any] = []
    try:
        target, procs = _local_server(tmp)
        result = measure_create_rate(target, counts, window=args.window, writers=args.writers,
                                     watchers=args.watchers, max_seconds=args.max_seconds,
                                     processes={"apiserver": procs[0].pid, "etcd": procs[1].pid})
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for c, r in result["rates"].items():
        at = result["cpu_ms_per_object_at"].get(c, {})
        cpu = ", ".join(f"{k} {v}" for k, v in at.items())
        rows.append((f"objects/s at {c}", "not reached" if r is None else f"{r}  (CPU ms/object: {cpu})"))
    rows += [
        ("ratio first/last (target <= 1.5)", str(result["ratio_first_to_last"])),
        ("objects created / errors", f"{result['objects_created']} / {result['errors']} in {result['seconds']} s"),
        ("client latency p50 / p99", f"{result['client_p50_ms']} / {result['client_p99_ms']} ms"),
        ("server time per create / etcd call", f"{result['server_create_ms']} / {result['etcd_call_ms']} ms"),
        ("etcd WAL fsync: mean / per object",
         f"{result['etcd_wal_fsync_ms']} ms / {result['etcd_wal_fsyncs_per_object']}"),
        ("CPU ms per object", ", ".join(f"{k} {v}" for k, v in result["cpu_ms_per_object"].items())),
        ("idle-machine estimate (2 cores / CPU per object)", f"{result['idle_estimate']} objects/s"),
        ("RSS at the end (MB)", ", ".join(f"{k} {v}" for k, v in result["rss_mb_at_end"].items())),
        ("watch events seen / expected", f"{result['watch_events']} / {result['watch_events_expected']}"),
        ("writers / watchers", f"{result['writers']} / {result['watchers']}"),
        ("load average at the end", " ".join(map(str, result["loadavg"]))),
    ]
    emit(rows, result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
