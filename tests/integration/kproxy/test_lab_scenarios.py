"""kproxy in the lab: the seed scenarios and the failure/recovery cases, one suite for every
data path (the same assertions for each, except where a mode differs by design: said where).

One lab per mode (module scope, as test_lab_modes.py, whose ServiceLab this reuses): 2 nodes, the
control plane, and kproxy started with a short `--sync-period` so that drift repair is observable
within the test. Every probe runs inside a lab pod (curl, or a small Python client that keeps a
TCP connection and a UDP socket open across a test) in the node's pod cgroup, as a container runs;
this process only talks to the lab API server over loopback and edits the nodes' data paths.

Seeds: S6 (port 90 -> named targetPort), S7 (multi-port), S14 (selector-less service + manual
Endpoints), S15 (fixed clusterIP, duplicate/out-of-range rejected without a data path change),
S24 (kproxy restart without disruption). Plus: affinity expiry, hairpin, stale UDP flows after a
backend change, tampering repaired by the periodic full sync.
"""

from __future__ import annotations

import collections
import ctypes as ct
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from knet import cgroups, netns
from knet.kube import client
from lab import api
from lab.bringup import proxy
from lab.net import kernel, state, topology
from tests.integration.controlplane.cp_helpers import wait_for
from tests.integration.kproxy.test_lab_modes import MODES, NODE_IPS, ServiceLab, svc, up_lab

pytestmark = pytest.mark.integration
NODES = ("node1", "node2")
SYNC_PERIOD = 3.0  # kproxy's full-sync period in this lab (default 30 s): the drift-repair bound
AFFINITY_SECONDS = 2  # the shortest timeout that still leaves room for a few requests inside it
FIXED_IP = "10.100.125.105"  # S15's 10.0.125.105, moved into the lab's service range 10.96.0.0/12
PLAIN_IMAGE = "registry.example/knet/multi"  # any non-agnhost image: a plain HTTP server per port

# A long-lived client in a pod: one keep-alive HTTP connection per (host, port), one unconnected
# UDP socket (sendto, as most UDP clients) and one connected UDP socket per (host, port) (as
# glibc's resolver), kept across requests; JSON lines in and out. A broken connection is
# reported, never silently replaced (the next "keep" opens a new one, with a new source port).
POD_CLIENT = r"""
import errno, json, socket, sys
conns, connected = {}, {}
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

def read_http(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the peer")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = [int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")][0]
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the peer")
        body += chunk
    return body.decode()

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "keep":
            key = (req["host"], req["port"])
            s = conns.get(key)
            if s is None:
                s = conns[key] = socket.create_connection(key, timeout=2)
            try:
                s.sendall(b"GET /hostname HTTP/1.1\r\nHost: t\r\n\r\n")
                out = {"ok": read_http(s), "sport": s.getsockname()[1]}
            except OSError:
                conns.pop(key).close()
                raise
        elif req["op"] == "udp":
            udp.settimeout(req.get("timeout", 0.5))
            udp.sendto(b"hostname", (req["host"], req["port"]))
            out = {"ok": udp.recvfrom(2048)[0].decode()}
        else:
            key = (req["host"], req["port"])
            s = connected.get(key)
            if s is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.connect(key)
                except OSError:
                    s.close()
                    raise
                connected[key] = s
            s.settimeout(req.get("timeout", 0.5))
            try:
                s.send(b"hostname")
                out = {"ok": s.recv(2048).decode(), "sport": s.getsockname()[1]}
            except (ConnectionAbortedError, OSError) as e:
                # An aborted socket (the kernel disconnected it) is replaced, as resolvers do;
                # a timeout or a refusal (ICMP unreachable) keeps the socket.
                if isinstance(e, ConnectionAbortedError) or e.errno in (errno.EDESTADDRREQ, errno.ENOTCONN):
                    connected.pop(key).close()
                raise
    except Exception as e:
        out = {"err": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""


class ScenarioLab(ServiceLab):
    """ServiceLab plus what restarting kproxy needs (the lab's plan and kproxy's kubeconfig)."""

    def __init__(self, lab: api.Lab, mode: str) -> None:
        super().__init__(lab, mode)
        # The same plan api.up made (pure data: same name, size and overlay give the same plan).
        self.plan = topology.plan(lab.name, len(NODES), overlay="vxlan")
        self.kproxy_kubeconfig = state.load(lab.name)["control_plane"]["kubeconfigs"]["kproxy"]

    def start_kproxy(self) -> None:
        proxy.start(self.plan, self.mode, self.kproxy_kubeconfig, progress=lambda _m: None,
                    sync_period=SYNC_PERIOD)

    def pod_name(self, selector: str) -> str:
        return self.ready(selector, 1)[0]["metadata"]["name"]


class PodClient:
    """POD_CLIENT running in a pod's namespace and its node's pod cgroup (joined before it starts,
    so its sockets meet the eBPF socket hooks exactly as a container's do)."""

    def __init__(self, s: ScenarioLab, pod: str) -> None:
        record = s.lab.pod(pod)
        cmd = netns.exec_argv(record["netns"], [sys.executable, "-S", "-c", POD_CLIENT])
        cg = kernel.node_cgroup(s.lab.name, record["node"])
        if cg and os.path.isdir(cg):
            cmd = cgroups.join_argv(cg, cmd)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline() or "{}").get("ready"), "pod client did not start"

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def keep(self, host: str, port: int = 80) -> dict:
        return self._ask({"op": "keep", "host": host, "port": port})

    def udp(self, host: str, port: int, timeout: float = 0.3, connected: bool = False) -> dict:
        return self._ask({"op": "cudp" if connected else "udp", "host": host, "port": port, "timeout": timeout})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture(scope="module", params=MODES)
def sl(request: pytest.FixtureRequest) -> Iterator[ScenarioLab]:
    mode = request.param
    # kproxy is started here rather than by api.up: the short sync period is a test setting.
    lab = up_lab(request, nodes=len(NODES), control_plane=True)
    s = ScenarioLab(lab, mode)
    s.start_kproxy()
    # Everything at once, so the pods start while kproxy programs the services.
    s.deployment("web", 3)
    s.deployment("solo", 1, node="node1", labels={"app": "solo"})
    s.deployment("udp", 1, node="node2", labels={"app": "udp"})
    containers = [{"name": f"c{tag}", "image": f"{PLAIN_IMAGE}:{tag}",
                   "ports": [{"name": tag, "containerPort": port}],
                   "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1}}
                  for tag, port in (("a", 9376), ("b", 9377))]
    client.create(s.api, "Deployment", {"metadata": {"name": "multi"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "multi"}},
        "template": {"metadata": {"labels": {"app": "multi"}}, "spec": {"containers": containers}}}}, "default")
    for node in NODES:
        s.client_pod(f"client-{node}", node)
    create_service(s, "web90", {"app": "web"}, [{"name": "www", "port": 90, "targetPort": "http"}])  # S6
    create_service(s, "multi", {"app": "multi"}, [{"name": "a", "port": 8080, "targetPort": 9376},  # S7
                                                  {"name": "b", "port": 8081, "targetPort": "b"}])
    s.service("web", {"app": "web"})
    s.service("solo", {"app": "solo"})
    s.service("tamper", {"app": "web"})
    s.service("sticky", {"app": "web"}, sessionAffinity="ClientIP",
              sessionAffinityConfig={"clientIP": {"timeoutSeconds": AFFINITY_SECONDS}})
    create_service(s, "udp", {"app": "udp"}, [{"name": "dns", "port": 53, "targetPort": "udp", "protocol": "UDP"}])
    for selector, count in (("app=web", 3), ("app=solo", 1), ("app=udp", 1), ("app=multi", 1), ("role=client", 2)):
        s.ready(selector, count)
    for service, count in (("web", 3), ("solo", 1), ("udp", 1), ("multi", 1)):
        s.endpoints(service, count)
    try:
        yield s
    finally:
        s.api.close()


def create_service(s: ServiceLab, name: str, selector: dict | None, ports: list[dict], **spec) -> dict:
    body = {"metadata": {"name": name}, "spec": {"ports": ports, **spec}}
    if selector:
        body["spec"]["selector"] = selector
    return client.create(s.api, "Service", body, "default")


def vip_of(s: ServiceLab, name: str) -> str:
    return svc(s, name)["spec"]["clusterIP"]


# -- data path views ---------------------------------------------------------------------------

def kube_rules(s: ServiceLab, node: str) -> list[str]:
    """kproxy's rules on a node: iptables (every table; rules of KUBE-* chains and jumps to them)
    and, in nftables mode, "<chain> <rule>" for every rule of the kube-proxy table (set and map
    contents left out: affinity sets hold clients with running timers)."""
    out = s.lab.exec(node, ["iptables-save"]).stdout
    rules = [line for line in out.splitlines() if line.startswith("-A ") and "KUBE-" in line]
    if s.mode == "nftables":
        chain = None
        for line in s.lab.exec(node, ["nft", "-t", "list", "table", "ip", "kube-proxy"]).stdout.splitlines():
            line = line.strip()
            if line.startswith("chain "):
                chain = line.split()[1]
            elif line == "}":
                chain = None
            elif chain and line and not line.startswith(("type ", "policy ")):
                rules.append(f"{chain} {line}")
    return rules


def normalized(rules: list[str], mode: str) -> list[str]:
    # userspace mode: a restarted daemon listens on new local ports, so its REDIRECTs differ in
    # the port only.
    if mode == "userspace":
        rules = [re.sub(r"--to-ports \d+", "--to-ports N", r) for r in rules]
    return sorted(rules)


def kproxy_metric(s: ServiceLab, node: str, metric: str) -> float:
    text = s.lab.exec(node, ["curl", "-s", "-m", "2", f"http://{NODE_IPS[node]}:10249/metrics"]).stdout
    m = re.search(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.M)
    assert m, f"{metric} not in node {node}'s kproxy metrics"
    return float(m.group(1))


def vip_rules(s: ServiceLab, node: str, chain: str, vip: str) -> list[str]:
    out = s.lab.exec(node, ["iptables-save", "-t", "nat"]).stdout
    return [line for line in out.splitlines() if line.startswith(f"-A {chain} ") and f"-d {vip}/32" in line]


def nft_service_element(s: ServiceLab, node: str, vip: str, port: int, delete: bool = False) -> bool:
    """Whether @service-ips has vip . tcp . port on the node (delete: remove it, returning whether
    it was there)."""
    key = f"{vip} . tcp . {port}"
    listed = s.lab.exec(node, ["nft", "list", "map", "ip", "kube-proxy", "service-ips"]).stdout
    present = f"{key} :" in listed
    if delete and present:
        s.lab.exec(node, ["nft", "delete", "element", "ip", "kube-proxy", "service-ips", "{", key, "}"], check=True)
    return present


def ebpf_frontend(s: ServiceLab, node: str, vip: str, port: int, delete: bool = False) -> bool:
    """Whether the socket-hook frontend of vip:port/TCP is in the services map of the programs
    attached to the node's pod cgroup (delete: remove it, returning whether it was there)."""
    from bcc.libbcc import lib

    from kproxy.ebpf import loader, maps

    cg = kernel.node_cgroup(s.lab.name, node)
    prog_ids = loader.cgroup_prog_ids(cg, loader.attach_type_value("CGROUP_INET4_CONNECT"))
    assert prog_ids, f"no connect4 program on {cg}"
    key = maps.pack_fe_key(maps.FeKey(vip, port, maps.PROTOCOLS["TCP"], maps.SCOPE_SOCK))
    for map_id in loader.prog_map_ids(prog_ids[0]):
        fd, name, _, _ = loader.open_map(map_id)
        try:
            if name != "services":
                continue
            if delete:
                return lib.bpf_delete_elem(fd, ct.byref(key)) == 0
            value = maps.CFeVal()
            return lib.bpf_lookup_elem(fd, ct.byref(key), ct.byref(value)) == 0
        finally:
            os.close(fd)
    raise AssertionError("the connect4 program has no services map")


# -- seeds -------------------------------------------------------------------------------------

def test_s6_port_90_to_named_target_port(sl: ScenarioLab) -> None:
    vip = vip_of(sl, "web90")
    web = {p["metadata"]["name"] for p in sl.ready("app=web", 3)}
    got = wait_for(lambda: sl.curl("client-node1", f"http://{vip}:90/hostname"), 10, "an answer on :90")
    assert got in web
    assert sl.curl("client-node1", f"http://{vip}:80/hostname", timeout=1) is None  # only :90 is a service port


def test_s7_multi_port_each_port_reaches_its_target(sl: ScenarioLab) -> None:
    vip = vip_of(sl, "multi")
    pod = sl.pod_name("app=multi")
    # The two containers answer "<pod> <image tag>": which target port was reached.
    assert wait_for(lambda: sl.curl("client-node2", f"http://{vip}:8080/"), 10, ":8080") == f"{pod} a"
    assert sl.curl("client-node2", f"http://{vip}:8081/") == f"{pod} b"


def test_s14_selectorless_service_with_manual_endpoints(sl: ScenarioLab) -> None:
    target = sl.ready("app=solo", 1)[0]
    created = create_service(sl, "custom", None, [{"name": "http", "port": 80, "targetPort": 8080}])
    client.create(sl.api, "Endpoints", {"metadata": {"name": "custom"}, "subsets": [{
        "addresses": [{"ip": target["status"]["podIP"]}], "ports": [{"name": "http", "port": 8080}]}]}, "default")
    vip = created["spec"]["clusterIP"]
    got = wait_for(lambda: sl.curl("client-node2", f"http://{vip}/hostname"), 10, "the VIP of the manual Endpoints")
    assert got == target["metadata"]["name"]


def test_s15_fixed_cluster_ip_honoured_duplicate_rejected(sl: ScenarioLab) -> None:
    created = create_service(sl, "fixed", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"}],
                             clusterIP=FIXED_IP)
    assert created["spec"]["clusterIP"] == FIXED_IP
    assert wait_for(lambda: sl.curl("client-node1", f"http://{FIXED_IP}/hostname"), 10, "the fixed clusterIP")
    time.sleep(0.3)  # let every node finish syncing "fixed" before the snapshot
    before = {n: (normalized(kube_rules(sl, n), sl.mode), kproxy_metric(sl, n, "kproxy_service_ports"),
                  kproxy_metric(sl, n, "kproxy_programmed_entries")) for n in NODES}
    for name, ip in (("fixed-dup", FIXED_IP), ("fixed-range", "10.0.125.105")):
        with pytest.raises(client.ApiException) as err:
            create_service(sl, name, {"app": "web"}, [{"port": 80}], clusterIP=ip)
        assert err.value.status == 422, (name, err.value.status, err.value.body)
        assert client.get(sl.api, "Service", name, "default") is None
    time.sleep(0.5)  # longer than kproxy's batching window: a sync would have happened
    after = {n: (normalized(kube_rules(sl, n), sl.mode), kproxy_metric(sl, n, "kproxy_service_ports"),
                 kproxy_metric(sl, n, "kproxy_programmed_entries")) for n in NODES}
    assert after == before
    for n in NODES:
        with open(os.path.join(sl.lab.state_dir, n, "kproxy.log")) as f:
            log = f.read()
        assert "fixed-dup" not in log and "fixed-range" not in log


# -- behaviour ---------------------------------------------------------------------------------

def test_hairpin_pod_reaches_itself_through_its_service(sl: ScenarioLab) -> None:
    vip = vip_of(sl, "solo")
    pod = sl.pod_name("app=solo")
    got = wait_for(lambda: sl.curl(pod, f"http://{vip}/hostname"), 10, "the pod's own service from the pod")
    assert got == pod


def test_affinity_holds_then_expires_after_timeout(sl: ScenarioLab) -> None:
    """Three clients (three pod addresses) each pick a backend, hold it within the timeout, go
    idle past it, pick again: at least one of the nine re-picks must land elsewhere (3 backends:
    a (1/3)^9 chance that expired affinity looks like held affinity)."""
    vip = vip_of(sl, "sticky")
    clients = ["client-node1", "client-node2", sl.pod_name("app=solo")]

    def cycles(pod: str) -> list[list[str | None]]:
        picks = []
        for i in range(4):
            if i:
                time.sleep(AFFINITY_SECONDS + 0.8)
            picks.append([sl.curl(pod, f"http://{vip}/hostname") for _ in range(3)])
        return picks

    with ThreadPoolExecutor(len(clients)) as pool:
        results = dict(zip(clients, pool.map(cycles, clients), strict=True))
    for pod, picks in results.items():
        for got in picks:
            assert None not in got and len(set(got)) == 1, f"{pod}: affinity did not hold within the timeout: {picks}"
    moved = sum(a[0] != b[0] for picks in results.values() for a, b in itertools.pairwise(picks))
    assert moved > 0, f"no client ever moved after the {AFFINITY_SECONDS}s timeout: {results}"


def test_s24_kproxy_restart_keeps_established_connections(sl: ScenarioLab) -> None:
    """SIGTERM every node's kproxy and start it again while a pod keeps using one TCP connection
    through the VIP. iptables, nftables and ebpf leave the data path in place (conntrack / the connected
    socket keep the flow), so the connection never notices. In userspace mode the proxy process
    is an end of every proxied connection, so those die with it (as in kube-proxy's userspace
    mode): there, new connections must work again once the successor has synced."""
    vip = vip_of(sl, "web")
    c = PodClient(sl, "client-node1")
    try:
        first = c.keep(vip)
        assert "ok" in first, first
        before = {n: (normalized(kube_rules(sl, n), sl.mode), kproxy_metric(sl, n, "kproxy_programmed_entries"))
                  for n in NODES}
        results: list[tuple[float, dict]] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                results.append((time.monotonic(), c.keep(vip)))
                time.sleep(0.05)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            down_at = time.monotonic()
            proxy.stop(sl.plan, wait=15)
            sl.start_kproxy()
            up_at = time.monotonic()
            time.sleep(0.5)
        finally:
            stop.set()
            t.join(5)
        during = [r for at, r in results if down_at <= at <= up_at]
        assert during, "no request while kproxy was restarting"
        if sl.mode == "userspace":
            assert wait_for(lambda: sl.curl("client-node1", f"http://{vip}/hostname"), 3,
                            "a new connection after the restart")
        else:
            bad = [r for _, r in results if r.get("sport") != first["sport"] or r.get("ok") != first["ok"]]
            assert not bad, f"the established connection was disturbed: {bad[:3]} (first {first})"
        after = {n: (normalized(kube_rules(sl, n), sl.mode), kproxy_metric(sl, n, "kproxy_programmed_entries"))
                 for n in NODES}
        for n in NODES:
            dups = [r for r, k in collections.Counter(after[n][0]).items() if k > 1]
            assert not dups, f"{n}: rules duplicated by the restart: {dups[:3]}"
        assert after == before, "the restarted kproxy programmed something else"
    finally:
        c.close()


@pytest.mark.parametrize("socket_kind", ["sendto", "connected"])
def test_udp_stale_flows_move_to_the_new_backend(sl: ScenarioLab, socket_kind: str) -> None:
    """A UDP client keeps sending from one socket to the ClusterIP while its only backend is
    deleted and the Deployment replaces it: within ~2 s of the new endpoint being ready, the
    client's datagrams reach the new pod. Both an unconnected socket (sendto) and a connected
    one (as glibc's resolver uses).

    iptables, nftables: kproxy deletes the conntrack entries pointing at the old endpoint; userspace: the
    proxy drops its flows to it; both keep the same client socket. ebpf: sendmsg translates
    every unconnected datagram from the current maps; a connected socket was translated once,
    at connect(), so kproxy aborts it when its backend goes (the client sees one error,
    ECONNABORTED or EDESTADDRREQ, and reconnects, as a resolver does)."""
    vip = vip_of(sl, "udp")
    old = sl.ready("app=udp", 1)[0]["metadata"]["name"]
    connected = socket_kind == "connected"
    c = PodClient(sl, "client-node1")
    try:
        first = wait_for(lambda: (r := c.udp(vip, 53, connected=connected)).get("ok") and r, 10,
                         "a UDP answer through the VIP")
        assert first["ok"] == old
        client.delete(sl.api, "Pod", old, "default")
        ready_at = answered_at = new = None
        errors: list[str] = []
        reply: dict = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = c.udp(vip, 53, timeout=0.2, connected=connected)
            now = time.monotonic()
            if "err" in reply and "timed out" not in reply["err"]:
                errors.append(reply["err"])
            if ready_at is None:
                new = next((ref for ref in ready_endpoint_pods(sl, "udp") if ref != old), None)
                ready_at = now if new else None
            if ready_at is not None and reply.get("ok") and reply["ok"] != old:
                answered_at = now
                break
            if ready_at is not None and now - ready_at > 4:
                break
        assert ready_at is not None, "the replacement pod never became a ready endpoint"
        assert answered_at is not None, f"the UDP socket never reached the new backend {new} (last reply {reply})"
        assert reply["ok"] == new
        assert answered_at - ready_at < 2.5, f"{answered_at - ready_at:.1f}s after the new endpoint was ready"
        if connected and sl.mode == "ebpf":
            # The abort shows on the next recv (ECONNABORTED) or, if it came between two
            # requests, on the next send of the now disconnected socket (EDESTADDRREQ).
            aborted = [e for e in errors if e.startswith("ConnectionAbortedError") or "[Errno 89]" in e]
            assert len(aborted) == 1, f"the connected socket was not aborted exactly once: {errors}"
            assert reply["sport"] != first["sport"], "the answer came on the aborted socket"
        elif connected:
            assert reply["sport"] == first["sport"], "the client socket was replaced"
            assert not any(e.startswith("ConnectionAbortedError") or "[Errno 89]" in e for e in errors), errors
    finally:
        c.close()


def ready_endpoint_pods(s: ServiceLab, service: str) -> list[str]:
    slices = client.list_objects(s.api, "EndpointSlice", "default",
                                 label_selector=f"kubernetes.io/service-name={service}")["items"]
    return [(e.get("targetRef") or {}).get("name", "") for sl_ in slices for e in sl_.get("endpoints") or []
            if e.get("conditions", {}).get("ready")]


def test_tampering_is_repaired_by_the_periodic_full_sync(sl: ScenarioLab) -> None:
    """Remove the service's translation on node1 by hand (iptables: its KUBE-SERVICES rule;
    nftables: its @service-ips element; userspace: its portal REDIRECT; ebpf: its socket-hook
    frontend in the BPF map): the pods of
    node1 lose the service until the next full sync (every SYNC_PERIOD s here) puts it back."""
    vip = vip_of(sl, "tamper")
    url = f"http://{vip}/hostname"
    assert wait_for(lambda: sl.curl("client-node1", url), 10, "the service before tampering")
    if sl.mode == "ebpf":
        assert ebpf_frontend(sl, "node1", vip, 80, delete=True)

        def present() -> bool:
            return ebpf_frontend(sl, "node1", vip, 80)
    elif sl.mode == "nftables":
        assert nft_service_element(sl, "node1", vip, 80, delete=True)

        def present() -> bool:
            return nft_service_element(sl, "node1", vip, 80)
    else:
        chain = "KUBE-SERVICES" if sl.mode == "iptables" else "KUBE-PORTALS-CONTAINER"
        rules = vip_rules(sl, "node1", chain, vip)
        assert rules, f"no {chain} rule for {vip}"
        for rule in rules:
            spec = shlex.split(rule)
            spec[0] = "-D"
            sl.lab.exec("node1", ["iptables", "-w", "5", "-t", "nat", *spec], check=True)

        def present() -> bool:
            return bool(vip_rules(sl, "node1", chain, vip))
    tampered_at = time.monotonic()
    answer = sl.curl("client-node1", url, timeout=1)
    if not present():  # not yet repaired while we looked: the tampering must have had an effect
        assert answer is None, f"the service still answered without its translation: {answer}"
    wait_for(present, SYNC_PERIOD + 3, "the translation put back by the full sync", interval=0.2)
    assert time.monotonic() - tampered_at < SYNC_PERIOD + 3
    assert wait_for(lambda: sl.curl("client-node1", url), 3, "the service after the repair")

