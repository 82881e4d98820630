"""The ebpf data path on real namespaces, driven directly with service ports.

Topology (one per module; every test full-syncs its own services, so tests do not leak state):

    client (192.168.77.100, fd00:33::100) --+
    node1 eth0 (.1, fd00:33::1) ------------+-- bridge in an underlay namespace
    node2 eth0 (.2, fd00:33::2) ------------+
    node1: cni0 10.99.0.0/24 + fd00:10:244:1::/64, pods a, b, c (knet-cni), kproxy's ebpf
           backends (one per family, one program set), pods' cgroup
    node2: cni0 10.99.1.0/24 + fd00:10:244:2::/64, pod r (a remote backend, reached over the LAN)

The socket hooks only act on processes in the pods' cgroup, so pod clients are subprocesses that
join the cgroup and the pod's namespace before they open a socket (servers run in this process,
outside the cgroup, as a pod's server would be unaffected anyway).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from knet import links, netns
from kproxy.backend import sync_all
from kproxy.ebpf import loader, maps
from kproxy.ebpf.backend import EbpfBackend
from kproxy.model import Config, Endpoint, ServicePort
from tests.integration.cni.conftest import _make_node
from tests.integration.kproxy.kproxy_helpers import ask, named_server, wait_answers
from tests.netutil import accept_loop, server_socket, serving

pytestmark = pytest.mark.integration
CGROUP2 = "/sys/fs/cgroup/unified"
NODE1, NODE2, CLIENT = "192.168.77.1", "192.168.77.2", "192.168.77.100"
LB_IP = "192.168.200.10"
NODE1_6, NODE2_6, CLIENT_6 = "fd00:33::1", "fd00:33::2", "fd00:33::100"
POD_SUBNETS = {"node1": ("10.99.0.0/24", "fd00:10:244:1::/64"), "node2": ("10.99.1.0/24", "fd00:10:244:2::/64")}

# A pod client: joins the cgroup, then the pod's network namespace (in that order: /sys/fs/cgroup
# is reachable from here, and sockets must be made after both), then answers JSON requests.
CLIENT_SCRIPT = r"""
import ctypes, json, os, socket, sys, time
cgroup, ns = sys.argv[1], sys.argv[2]
with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
fd = os.open(ns, os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    raise SystemExit("setns failed")
os.close(fd)
print(json.dumps({"ready": os.getpid()}), flush=True)
socks = {}
for line in sys.stdin:
    req = json.loads(line)
    out = []
    for _ in range(req.get("n", 1)):
        t0 = time.monotonic()
        try:
            if req["op"] == "tcp":
                with socket.create_connection((req["host"], req["port"]), timeout=req.get("timeout", 2)) as s:
                    peer = s.getpeername()
                    s.sendall(b"q")
                    data = s.recv(1024)
            else:
                s = socks.get(req.get("sock"))
                if s is None:
                    s = socket.socket(socket.AF_INET6 if ":" in req["host"] else socket.AF_INET, socket.SOCK_DGRAM)
                    s.settimeout(req.get("timeout", 2))
                    if req.get("sock"):
                        socks[req["sock"]] = s
                s.sendto(b"q", (req["host"], req["port"]))
                data, peer = s.recvfrom(2048)
                if not req.get("sock"):
                    s.close()
            out.append({"ok": data.decode(), "peer": list(peer)})
        except OSError as e:
            out.append({"err": type(e).__name__, "errno": e.errno, "t": time.monotonic() - t0})
    print(json.dumps(out), flush=True)
"""


class PodClient:
    def __init__(self, cgroup: str, ns: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", CLIENT_SCRIPT, cgroup, netns.path(ns)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline() or "{}")
        assert ready.get("ready") == self.proc.pid, "pod client did not start"

    def run(self, op: str, host: str, port: int, n: int = 1, **kw) -> list[dict]:
        self.proc.stdin.write(json.dumps({"op": op, "host": host, "port": port, "n": n, **kw}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def names(self, op: str, host: str, port: int, n: int = 1, **kw) -> list[str]:
        """The answering server's name per request ("!" + error name on failure)."""
        return [r["ok"].split()[0] if "ok" in r else "!" + r["err"] for r in self.run(op, host, port, n, **kw)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@contextlib.contextmanager
def servers(ns: str, name: str, port: int = 8080) -> Iterator[None]:
    """TCP and UDP servers in `ns` answering "<name> <peer ip>", on both families."""
    with named_server(ns, name, "TCP", port, addr="::"), named_server(ns, name, "UDP", port, addr="::"):
        yield


@contextlib.contextmanager
def echo_server(ns: str, name: str, port: int = 9090) -> Iterator[None]:
    """A TCP server in `ns` answering every message on a connection with its name (long-lived
    connections, for the restart test)."""
    srv = server_socket(ns, port=port)

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.settimeout(0.2)
            while not stop.is_set():
                try:
                    if not conn.recv(1024):
                        return
                    conn.sendall(name.encode())
                except TimeoutError:
                    continue
                except OSError:
                    return

    def serve(stop: threading.Event) -> None:
        accept_loop(srv, stop, lambda conn, _: threading.Thread(target=handle, args=(conn, stop), daemon=True).start())

    with serving([srv], serve):
        yield


@contextlib.contextmanager
def pod_cgroup(tag: str) -> Iterator[str]:
    """A cgroup v2 directory for the node's pods; removed afterwards (its processes are ours)."""
    path = os.path.join(CGROUP2, f"knet-{tag}")
    os.mkdir(path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError), open(os.path.join(path, "cgroup.procs")) as f:
            for pid in f.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        deadline = time.monotonic() + 5
        while os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def sysctl(ns: str, key: str, value: str) -> None:
    netns.run(ns, ["sysctl", "-qw", f"{key}={value}"], check=True)


class Lab:
    def __init__(self, node1, node2, cgroup: str) -> None:
        self.node1, self.node2, self.cgroup = node1, node2, cgroup
        self.ul, self.client = f"{node1.prefix}-ul", f"{node1.prefix}-cl"
        self.pods: dict[str, str] = {}  # name -> IP
        self.pods6: dict[str, str] = {}  # name -> IPv6 address
        self.ns: dict[str, str] = {}  # name -> namespace
        self.clients: dict[str, PodClient] = {}
        self.backend: EbpfBackend | None = None
        self.backend6: EbpfBackend | None = None
        self._underlay()

    def _underlay(self) -> None:
        for name in (self.ul, self.client):
            netns.create(name)
        with links.iproute(self.ul) as ipr:
            bridge = links.ensure_bridge(ipr, "br0")
            for short, ns in (("n1", self.node1.name), ("n2", self.node2.name), ("cl", self.client)):
                fd = os.open(netns.path(ns), os.O_RDONLY)
                try:
                    links.make_veth(ipr, short, "eth0", peer_netns_fd=fd, master=bridge)
                finally:
                    os.close(fd)
        for ns, ip, ip6 in ((self.node1.name, NODE1, NODE1_6), (self.node2.name, NODE2, NODE2_6),
                            (self.client, CLIENT, CLIENT_6)):
            with links.iproute(ns) as ipr:
                links.set_up(ipr, "eth0")
                links.add_address(ipr, "eth0", f"{ip}/24")
                links.add_address(ipr, "eth0", f"{ip6}/64", nodad=True)
        with links.iproute(self.node1.name) as ipr:
            links.add_route(ipr, "10.99.1.0/24", gateway=NODE2)
            links.add_route(ipr, POD_SUBNETS["node2"][1], gateway=NODE2_6)
        with links.iproute(self.node2.name) as ipr:
            links.add_route(ipr, "10.99.0.0/24", gateway=NODE1)
            links.add_route(ipr, POD_SUBNETS["node1"][1], gateway=NODE1_6)
        with links.iproute(self.client) as ipr:
            links.add_route(ipr, f"{LB_IP}/32", gateway=NODE1)
            links.add_route(ipr, "10.96.0.0/12", gateway=NODE1)
            links.add_route(ipr, "fd00:10:96::/112", gateway=NODE1_6)
        for ns in (self.node1.name, self.node2.name):
            sysctl(ns, "net.ipv4.ip_forward", "1")
            sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
            # node1 forwards remote-backend traffic out the interface it came in on; no redirects
            sysctl(ns, "net.ipv4.conf.all.send_redirects", "0")

    def pod(self, node, name: str, subnets: tuple[str, str]) -> str:
        """A pod with an address of each family."""
        ns = node.new_pod()
        conf = node.conf(ipam={"type": "host-local", "ranges": [[{"subnet": subnets[0]}], [{"subnet": subnets[1]}]],
                               "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                               "dataDir": os.path.join(node.state, "ipam")})
        rc, res = node.cni("ADD", conf, name, ns)
        assert rc == 0, res
        for ip in res["ips"]:
            address = ip["address"].split("/")[0]
            (self.pods6 if ":" in address else self.pods)[name] = address
        self.ns[name] = ns
        return ns

    def start_backend(self) -> None:
        """Both families' backends, as the daemon makes them; the IPv6 one filled (empty) at once,
        so that the programs attach after the IPv4 one's first sync."""
        with netns.enter(self.node1.name):
            self.backend = EbpfBackend(Config(node_name="node1", cluster_cidr="10.99.0.0/16"),
                                       cgroup=self.cgroup, external_ifaces=["eth0"])
            self.backend6 = EbpfBackend(Config(node_name="node1", cluster_cidr="fd00:10:244::/56", family=6),
                                        cgroup=self.cgroup, external_ifaces=["eth0"])
            sync_all(self.backend6, [], True)

    def stop_backends(self, cleanup: bool = False) -> None:
        """The daemon's SIGTERM (close: programs stay) or its uninstall (cleanup)."""
        with netns.enter(self.node1.name):
            for be in (self.backend, self.backend6):
                if be is not None:
                    be.cleanup() if cleanup else be.close()
        self.backend = self.backend6 = None

    def sync(self, ports: list[ServicePort], full: bool = False):
        """Each family's ports to its backend (the IPv4 backend's result)."""
        assert self.backend is not None and self.backend6 is not None
        with netns.enter(self.node1.name):
            sync_all(self.backend6, [sp for sp in ports if sp.family == 6], full)
            return sync_all(self.backend, [sp for sp in ports if sp.family == 4], full)

    def pod_client(self, name: str) -> PodClient:
        if name not in self.clients:
            self.clients[name] = PodClient(self.cgroup, self.ns[name])
        return self.clients[name]

    def ep(self, name: str, node: str = "node1") -> Endpoint:
        return Endpoint(self.pods[name], 8080, node_name=node)

    def ep6(self, name: str, node: str = "node1") -> Endpoint:
        return Endpoint(self.pods6[name], 8080, node_name=node)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.stop_backends(cleanup=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with contextlib.ExitStack() as stack:
        n1 = stack.enter_context(contextlib.contextmanager(_make_node)(with_agent=False))
        n2 = stack.enter_context(contextlib.contextmanager(_make_node)(with_agent=False))
        cgroup = stack.enter_context(pod_cgroup(n1.prefix))
        lab = Lab(n1, n2, cgroup)
        stack.callback(lab.close)
        for name in ("a", "b", "c"):
            stack.enter_context(servers(lab.pod(n1, name, POD_SUBNETS["node1"]), name))
            stack.enter_context(echo_server(lab.ns[name], name))
        stack.enter_context(servers(lab.pod(n2, "r", POD_SUBNETS["node2"]), "r"))
        lab.start_backend()
        for name in ("a", "b", "r"):  # new IPv6 neighbours answer before the tests (set-up, not speed)
            wait_answers(n1.name, lab.pods6[name], 8080, name)
        yield lab



def svc(name: str, vip: str, eps: list[Endpoint], proto: str = "TCP", **kw) -> ServicePort:
    return ServicePort("default", name, "", proto, 80, (vip,), endpoints=tuple(eps), **kw)


def test_cluster_ip_spreads_and_follows_endpoint_changes_in_place(lab: Lab):
    vip = "10.96.7.1"
    lab.sync([svc("web", vip, [lab.ep("a"), lab.ep("b")])], full=True)
    client = lab.pod_client("c")
    results = client.run("tcp", vip, 80, n=60)
    seen = collections.Counter(r["ok"].split()[0] for r in results)
    assert set(seen) == {"a", "b"} and min(seen.values()) >= 15, seen  # an even split, not a fluke
    assert {tuple(r["peer"]) for r in results} == {(vip, 80)}  # getpeername shows the service
    # The change is a map update: the attached programs stay the same.
    at = loader.attach_type_value("CGROUP_INET4_CONNECT")
    before = loader.cgroup_prog_ids(lab.cgroup, at)
    res = lab.sync([svc("web", vip, [lab.ep("b")])])
    assert not res.full and res.services_written == 1
    assert set(client.names("tcp", vip, 80, n=20)) == {"b"}
    lab.sync([svc("web", vip, [lab.ep("a"), lab.ep("b"), lab.ep("r", "node2")])])
    assert set(client.names("tcp", vip, 80, n=60)) == {"a", "b", "r"}
    assert loader.cgroup_prog_ids(lab.cgroup, at) == before


def test_no_endpoints_is_refused_at_once(lab: Lab):
    vip = "10.96.7.2"
    lab.sync([svc("empty", vip, []), svc("empty-udp", vip, [], "UDP")], full=True)
    client = lab.pod_client("c")
    for op in ("tcp", "udp"):
        (r,) = client.run(op, vip, 80, timeout=3)
        assert r.get("errno") == 111 and r["t"] < 0.5, r


def test_udp_cluster_ip_replies_come_from_the_vip_and_move_off_removed_endpoints(lab: Lab):
    vip = "10.96.7.3"
    lab.sync([svc("dns", vip, [lab.ep("a")], "UDP")], full=True)
    client = lab.pod_client("c")
    (r,) = client.run("udp", vip, 80, sock="s1")
    assert r["ok"].split()[0] == "a" and r["peer"] == [vip, 80], r
    # The same socket keeps its backend while it exists, and moves on when it goes away
    # (the stale-UDP-conntrack problem of the NAT data paths).
    lab.sync([svc("dns", vip, [lab.ep("a"), lab.ep("b")], "UDP")])
    assert set(client.names("udp", vip, 80, n=10, sock="s1")) == {"a"}
    lab.sync([svc("dns", vip, [lab.ep("b")], "UDP")])
    assert set(client.names("udp", vip, 80, n=5, sock="s1")) == {"b"}


def test_client_ip_affinity_holds_then_expires(lab: Lab):
    vip = "10.96.7.4"
    lab.sync([svc("sticky", vip, [lab.ep("a"), lab.ep("b")], affinity_seconds=1)], full=True)
    client = lab.pod_client("c")
    assert len(set(client.names("tcp", vip, 80, n=20))) == 1
    time.sleep(1.3)
    # Expired: new picks again; across fresh picks (each refreshing it) still one backend...
    first = client.names("tcp", vip, 80)[0]
    assert set(client.names("tcp", vip, 80, n=5)) == {first}
    # ...and a removed endpoint releases its clients at once.
    other = "a" if first == "b" else "b"
    lab.sync([svc("sticky", vip, [lab.ep(other)], affinity_seconds=1)])
    assert set(client.names("tcp", vip, 80, n=5)) == {other}


def test_internal_traffic_policy_local_and_hairpin(lab: Lab):
    vip = "10.96.7.5"
    lab.sync([svc("itp", vip, [lab.ep("a"), lab.ep("r", "node2")], internal_local=True)], full=True)
    assert set(lab.pod_client("c").names("tcp", vip, 80, n=20)) == {"a"}
    # Hairpin: pod a reaching itself through its service (it sees itself as the client).
    results = lab.pod_client("a").run("tcp", vip, 80, n=3)
    assert {r["ok"] for r in results} == {f"a {lab.pods['a']}"}, results


def test_node_processes_in_the_cgroup_reach_the_vip(lab: Lab):
    vip = "10.96.7.11"
    lab.sync([svc("from-node", vip, [lab.ep("b")])], full=True)
    lab.ns["node1"] = lab.node1.name  # e.g. hostNetwork pods, placed in the node's cgroup
    assert lab.pod_client("node1").names("tcp", vip, 80, n=3) == ["b"] * 3


def test_node_port_and_load_balancer_from_outside_with_masquerade(lab: Lab):
    ports = [ServicePort("default", "np", "", proto, 80, ("10.96.7.6",), node_port=30080,
                         load_balancer_ips=(LB_IP,), endpoints=(lab.ep("a"), lab.ep("r", "node2")))
             for proto in ("TCP",)]
    ports.append(ServicePort("default", "np-udp", "", "UDP", 80, ("10.96.7.6",), node_port=30080,
                             endpoints=(lab.ep("a"), lab.ep("r", "node2"))))
    lab.sync(ports, full=True)
    seen = collections.Counter()
    for _ in range(30):
        name, src = ask(lab.client, NODE1, 30080).split()
        seen[name] += 1
        # Cluster policy masquerades: the backend sees a node address, not the client.
        assert src != CLIENT
    assert set(seen) == {"a", "r"}, seen  # the remote backend answers through node1 too
    assert {ask(lab.client, LB_IP, 80).split()[0] for _ in range(20)} == {"a", "r"}
    udp = {ask(lab.client, NODE1, 30080, "UDP").split()[0] for _ in range(20)}
    assert udp == {"a", "r"}
    # An off-cluster client routed to the node reaches the cluster IP too (masqueraded).
    name, src = ask(lab.client, "10.96.7.6", 80).split()
    assert name in ("a", "r") and src != CLIENT


def test_backend_replies_to_a_node_port_numbered_masquerade_port_are_not_translated(lab: Lab):
    # MASQUERADE --random-fully can give a flow to a remote backend a source port equal to a node
    # port; the backend's replies then arrive at nodeIP:nodePort and must not be DNATed.
    # (The "backend" is node2 itself, a host-network endpoint: pod traffic leaving node2 would be
    # masqueraded by the CNI, hiding the pod's address.)
    backend = ServicePort("default", "x", "", "UDP", 80, ("10.96.7.12",),
                          endpoints=(Endpoint(NODE2, 9999, node_name="node2"),))
    node_port = ServicePort("default", "y", "", "UDP", 80, ("10.96.7.13",), node_port=30099,
                            endpoints=(lab.ep("a"),))
    lab.sync([backend, node_port], full=True)

    def from_node2(sport: int) -> str:
        with netns.enter(lab.node2.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.bind((NODE2, sport))
            s.settimeout(0.7)
            s.sendto(b"q", (NODE1, 30099))
            try:
                return s.recv(1024).decode().split()[0]
            except OSError as e:
                return type(e).__name__

    assert from_node2(9998) == "a"  # an ordinary client of the node port
    assert from_node2(9999) != "a"  # a backend address: treated as a reply, left alone


def test_external_traffic_policy_local_keeps_the_client_address(lab: Lab):
    sp = ServicePort("default", "local", "", "TCP", 80, ("10.96.7.7",), node_port=30081, external_local=True,
                     endpoints=(lab.ep("b"), lab.ep("r", "node2")))
    lab.sync([sp], full=True)
    for _ in range(10):
        assert ask(lab.client, NODE1, 30081) == f"b {CLIENT}"
    # No local endpoint: dropped (the client times out), never sent to another node.
    lab.sync([ServicePort("default", "local", "", "TCP", 80, ("10.96.7.7",), node_port=30081,
                          external_local=True, endpoints=(lab.ep("r", "node2"),))])
    with pytest.raises(TimeoutError):
        ask(lab.client, NODE1, 30081, timeout=0.7)
    # No endpoints at all: rejected.
    lab.sync([ServicePort("default", "local", "", "TCP", 80, ("10.96.7.7",), node_port=30081)])
    with pytest.raises(ConnectionRefusedError):
        ask(lab.client, NODE1, 30081, timeout=2)


def test_full_sync_repairs_tampered_maps(lab: Lab):
    vip = "10.96.7.8"
    ports = [svc("tamper", vip, [lab.ep("a")])]
    lab.sync(ports, full=True)
    client = lab.pod_client("c")
    assert client.names("tcp", vip, 80) == ["a"]
    be = lab.backend
    assert be is not None
    fe = maps.FeKey(vip, 80, socket.IPPROTO_TCP, maps.SCOPE_SOCK)
    be.dp.delete("services", [fe])
    assert client.names("tcp", vip, 80, timeout=0.5)[0].startswith("!")
    res = lab.sync(ports, full=True)
    assert res.full
    assert client.names("tcp", vip, 80) == ["a"]
    # A slot pointing somewhere else, and an entry nobody owns, are both repaired too.
    set_id = be.dp.lookup("services", fe).set_id
    be.dp.update("slots", [(maps.SlotKey(set_id, 0), maps.Backend(lab.pods["b"], 8080))])
    stray = maps.FeKey("10.96.7.99", 80, socket.IPPROTO_TCP, maps.SCOPE_SOCK)
    be.dp.update("services", [(stray, maps.FeVal(set_id, 1, 0, 0))])
    assert client.names("tcp", vip, 80) == ["b"]
    lab.sync(ports, full=True)
    assert client.names("tcp", vip, 80, n=5) == ["a"] * 5
    assert be.dp.lookup("services", stray) is None


def test_restart_keeps_established_node_port_flows(lab: Lab):
    sp = ServicePort("default", "echo", "", "TCP", 80, ("10.96.7.10",), node_port=30090,
                     endpoints=(Endpoint(lab.pods["a"], 9090, node_name="node1"),
                                Endpoint(lab.pods["b"], 9090, node_name="node1")))
    lab.sync([sp], full=True)
    conns: list[tuple[socket.socket, str]] = []
    try:
        for _ in range(12):
            with netns.enter(lab.client):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((NODE1, 30090))
            s.sendall(b"1")
            conns.append((s, s.recv(64).decode()))
        assert {name for _, name in conns} == {"a", "b"}
        # The daemon stops (programs stay attached) and a new one takes over.
        lab.stop_backends()
        lab.start_backend()
        lab.sync([sp], full=True)
        for s, name in conns:
            s.sendall(b"2")
            assert s.recv(64).decode() == name  # same backend, replies still from the node port
        assert ask(lab.client, NODE1, 30090) in ("a", "b")
    finally:
        for s, _ in conns:
            s.close()


def test_cleanup_detaches_programs_and_removes_cgroup_hooks(lab: Lab):
    vip = "10.96.7.9"
    lab.sync([svc("bye", vip, [lab.ep("a")])], full=True)
    types = [loader.attach_type_value(at) for _, at in loader.CGROUP_PROGRAMS]
    assert all(loader.cgroup_prog_ids(lab.cgroup, t) for t in types)
    with links.iproute(lab.node1.name) as ipr:
        assert len(loader.tc_filters(ipr, "eth0")) == 2
    lab.stop_backends(cleanup=True)
    assert not any(loader.cgroup_prog_ids(lab.cgroup, t) for t in types)
    with links.iproute(lab.node1.name) as ipr:
        assert loader.tc_filters(ipr, "eth0") == []
    assert lab.pod_client("c").names("tcp", vip, 80, timeout=0.5)[0].startswith("!")
    for save in ("iptables-save", "ip6tables-save"):
        assert "KUBE-" not in netns.run(lab.node1.name, [save]).stdout
    lab.start_backend()  # a new instance attaches again (and later tests need one)


# --- IPv6: the connect6 / sendmsg6 / recvmsg6 / getpeername6 hooks and the tc programs' v6 branch ---
VIP6 = "fd00:10:96::701"


def svc6(name: str, vip: str, eps: list[Endpoint], proto: str = "TCP", **kw) -> ServicePort:
    return ServicePort("default", name, "", proto, 80, (vip,), endpoints=tuple(eps), family=6, **kw)


def test_v6_cluster_ip_spreads_and_getpeername_shows_the_service(lab: Lab):
    lab.sync([svc6("web6", VIP6, [lab.ep6("a"), lab.ep6("b")])], full=True)
    client = lab.pod_client("c")
    results = client.run("tcp", VIP6, 80, n=40)
    seen = collections.Counter(r["ok"].split()[0] for r in results)
    assert set(seen) == {"a", "b"} and min(seen.values()) >= 8, seen
    assert {tuple(r["peer"][:2]) for r in results} == {(VIP6, 80)}
    assert {r["ok"].split()[1] for r in results} == {lab.pods6["c"]}  # no NAT: the backend sees the pod
    # A partial sync of the v6 maps moves the traffic.
    lab.sync([svc6("web6", VIP6, [lab.ep6("b")])])
    assert set(client.names("tcp", VIP6, 80, n=10)) == {"b"}


def test_v6_udp_replies_come_from_the_vip(lab: Lab):
    lab.sync([svc6("dns6", VIP6, [lab.ep6("a")], "UDP")], full=True)
    (r,) = lab.pod_client("c").run("udp", VIP6, 80, sock="s6")
    assert r["ok"].split()[0] == "a" and r["peer"][:2] == [VIP6, 80], r


def test_v6_no_endpoints_is_refused_at_once(lab: Lab):
    lab.sync([svc6("empty6", VIP6, []), svc6("empty6-udp", VIP6, [], "UDP")], full=True)
    for op in ("tcp", "udp"):
        (r,) = lab.pod_client("c").run(op, VIP6, 80, timeout=3)
        assert r.get("errno") == 111 and r["t"] < 0.5, r


def test_v6_affinity_and_a_dual_stack_service_on_both_cluster_ips(lab: Lab):
    v4 = svc("both", "10.96.7.21", [lab.ep("a"), lab.ep("b")], affinity_seconds=60)
    v6 = svc6("both", VIP6, [lab.ep6("a"), lab.ep6("b")], affinity_seconds=60)
    lab.sync([v4, v6], full=True)
    client = lab.pod_client("c")
    assert len(set(client.names("tcp", VIP6, 80, n=15))) == 1
    assert len(set(client.names("tcp", "10.96.7.21", 80, n=15))) == 1


def test_v6_node_port_from_outside_with_masquerade(lab: Lab):
    sp = ServicePort("default", "np6", "", "TCP", 80, (VIP6,), node_port=30180,
                     endpoints=(lab.ep6("a"), lab.ep6("r", "node2")), family=6)
    lab.sync([sp], full=True)
    seen = collections.Counter()
    for _ in range(30):
        name, src = ask(lab.client, NODE1_6, 30180).split()
        seen[name] += 1
        assert src != CLIENT_6  # Cluster policy: masqueraded
    assert set(seen) == {"a", "r"}, seen  # the remote backend answers through node1 too
    # An off-cluster client routed to the node reaches the v6 cluster IP too.
    assert ask(lab.client, VIP6, 80).split()[0] in ("a", "r")
    # No endpoints: the tc program leaves the packet to ip6tables, which rejects it.
    lab.sync([ServicePort("default", "np6", "", "TCP", 80, (VIP6,), node_port=30180, family=6)])
    with pytest.raises(ConnectionRefusedError):
        ask(lab.client, NODE1_6, 30180, timeout=3)
