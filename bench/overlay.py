"""Overlay benchmark: cross-node pod-to-pod TCP over VXLAN and over host-gw, against the underlay.

One mini cluster (knet_testing.flannel, namespaces only): nodes 1-2 run flannel-py with the vxlan
backend, nodes 3-4 with host-gw (another etcd prefix, another Network), all on one underlay
bridge. Measured, interleaved round by round so machine noise hits every path alike:
  - bulk TCP throughput for --seconds (one stream, 256 KiB writes), in Gbit/s;
  - request/response rate: 1-byte ping-pong on one connection, transactions per second;
for pod(node1) -> pod(node2) over VXLAN, pod(node3) -> pod(node4) over host-gw, and node1 -> node2
on the underlay with no overlay at all (the limit). The ratios to the underlay are the figures
to watch. Sender and receiver are threads of this process (sockets made inside the namespaces),
so absolute numbers are Python's; the paths are compared under the same handicap.

    python -m bench.overlay [--seconds S] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

from bench.common import emit, unique_prefix
from knet import netns
from knet_testing.flannel import PREFIX, Topo

CHUNK = 256 * 1024
HOSTGW_PREFIX = "/knet-bench/hostgw"


def _pair(client_ns: str, server_ns: str, server_ip: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    with netns.enter(server_ns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((server_ip, 0))
    srv.listen(1)
    with netns.enter(client_ns):
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.settimeout(10)
    cli.connect((server_ip, srv.getsockname()[1]))
    conn, _ = srv.accept()
    conn.settimeout(10)
    return srv, cli, conn


def throughput_gbps(client_ns: str, server_ns: str, server_ip: str, seconds: float) -> float:
    srv, cli, conn = _pair(client_ns, server_ns, server_ip)
    received = [0, 0.0]

    def sink() -> None:
        buf = bytearray(CHUNK)
        start = time.perf_counter()
        while n := conn.recv_into(buf):
            received[0] += n
        received[1] = time.perf_counter() - start

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    data = memoryview(bytes(CHUNK))
    deadline = time.perf_counter() + seconds
    with srv, cli, conn:
        while time.perf_counter() < deadline:
            cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        t.join(30)
    return received[0] * 8 / received[1] / 1e9


def rr_per_second(client_ns: str, server_ns: str, server_ip: str, seconds: float) -> float:
    srv, cli, conn = _pair(client_ns, server_ns, server_ip)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def echo() -> None:
        while data := conn.recv(1):
            conn.sendall(data)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    count = 0
    with srv, cli, conn:
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            cli.sendall(b"x")
            cli.recv(1)
            count += 1
        elapsed = time.perf_counter() - start
        cli.shutdown(socket.SHUT_WR)
        t.join(10)
    return count / elapsed


def build(topo: Topo) -> dict[str, tuple[str, str, str]]:
    """Start both clusters; (client ns, server ns, server ip) per path."""
    topo.start_etcd()
    topo.put(f"{PREFIX}/config", json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}))
    topo.put(f"{HOSTGW_PREFIX}/config", json.dumps({"Network": "10.245.0.0/16", "Backend": {"Type": "host-gw"}}))
    nodes = {i: topo.add_node(i) for i in (1, 2, 3, 4)}
    for i, node in nodes.items():
        topo.start_daemon(node, prefix=PREFIX if i <= 2 else HOSTGW_PREFIX)
    for node in nodes.values():
        topo.wait_subnet(node)
        topo.add_pod(node)
    paths = {"underlay": (nodes[1].name, nodes[2].name, nodes[2].ip),
             "vxlan": (nodes[1].pod, nodes[2].pod, nodes[2].pod_ip),
             "hostgw": (nodes[3].pod, nodes[4].pod, nodes[4].pod_ip)}
    deadline = time.monotonic() + 15
    for name, (client, _server, ip) in paths.items():
        # The daemons program each other's routes asynchronously: wait until every path works.
        while netns.run(client, ["ping", "-c", "1", "-W", "1", ip]).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} path {client} -> {ip} does not work:\n{topo.logs()}")
            time.sleep(0.1)
    return paths


def run(seconds: float, rounds: int) -> dict:
    topo = Topo(prefix=unique_prefix("ov"))
    try:
        paths = build(topo)
        gbps: dict[str, list[float]] = {name: [] for name in paths}
        rr: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, path in paths.items():
                gbps[name].append(throughput_gbps(*path, seconds))
                rr[name].append(rr_per_second(*path, seconds / 2))
    finally:
        topo.cleanup()
    g = {name: round(statistics.median(v), 3) for name, v in gbps.items()}
    r = {name: round(statistics.median(v)) for name, v in rr.items()}
    return {
        "vxlan_gbps": g["vxlan"], "hostgw_gbps": g["hostgw"], "underlay_gbps": g["underlay"],
        "vxlan_ratio": round(g["vxlan"] / g["underlay"], 3), "hostgw_ratio": round(g["hostgw"] / g["underlay"], 3),
        "vxlan_rr_per_s": r["vxlan"], "hostgw_rr_per_s": r["hostgw"], "underlay_rr_per_s": r["underlay"],
        "seconds": seconds, "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="bulk transfer time per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    s = run(args.seconds, args.rounds)
    rows = [("path", "TCP Gbit/s   req/resp per s   vs underlay"),
            ("underlay (node->node)", f"{s['underlay_gbps']:<12} {s['underlay_rr_per_s']:<16} 1.0"),
            ("vxlan (pod->pod)", f"{s['vxlan_gbps']:<12} {s['vxlan_rr_per_s']:<16} {s['vxlan_ratio']}"),
            ("host-gw (pod->pod)", f"{s['hostgw_gbps']:<12} {s['hostgw_rr_per_s']:<16} {s['hostgw_ratio']}")]
    emit(rows, s, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
