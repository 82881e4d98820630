"""kproxy in the lab: seeds S9 (session affinity / A-B shift), S11 (endpoints follow delete,
recreate and scale) and S13 (chaos: a backend's server process killed), for every data path;
the seeds the material writes as `kubectl exec ... -- curl ...`, through kubectl, in one.

One 2-node lab with the control plane per mode (module scope; ServiceLab from test_lab_modes.py).
Every probe is a real client: curl in a pod (in the node's pod cgroup) or in the lab's outside
client namespace; each test creates its own objects and deletes them, whatever happens.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from knet import netns
from knet.kube import client
from knet_testing import anchors
from lab.bringup import controlplane
from tests.integration.controlplane.cp_helpers import wait_for
from tests.integration.kproxy.test_lab_modes import MODES, NODE_IPS, ServiceLab, up_lab
from tests.integration.kproxy.test_lab_scenarios import ready_endpoint_pods

pytestmark = pytest.mark.integration
# Extra addresses of the outside client (192.168.33.100/24): 16 client IPs, so that with four
# random-picked backends "every client on one version" has a 2^-15 chance, not 2^-7 as with 8.
EXTRA_IPS = [f"192.168.33.{i}" for i in range(101, 117)]
Answers = list[tuple[float, str | None]]  # (when the request started, its answer or None)


# The seeds also against the upstream control plane (kube-apiserver, kube-controller-manager:
# `knet lab up --control-plane real`), in one proxy mode: the data paths are the same.
REAL = "iptables+real"
# And in a dual-stack lab (`knet lab up --ip-family dual`, IPv4 primary): the seeds are written
# over IPv4, which must behave the same beside IPv6 (kproxy then programs both families).
DUAL = "nftables+dual"


@pytest.fixture(scope="module", params=[*MODES, REAL, DUAL])
def slab(request: pytest.FixtureRequest) -> Iterator[ServiceLab]:
    mode, _, variant = request.param.partition("+")
    if variant == "real" and (why := anchors.real_control_plane_missing()):
        pytest.skip(f"--control-plane real: {why}")
    control_plane = "real" if variant == "real" else True
    lab = up_lab(request, nodes=2, control_plane=control_plane, proxy_mode=mode,
                 ip_family="dual" if variant == "dual" else "ipv4")
    s = ServiceLab(lab, mode)
    s.client_pod("client-node1", "node1")
    s.ready("role=client", 1)
    try:
        yield s
    finally:
        s.api.close()


def pod_names(s: ServiceLab, selector: str) -> set[str]:
    """Every pod of the selector, ready or not, terminating or not."""
    return {p["metadata"]["name"] for p in client.list_objects(s.api, "Pod", "default",
                                                                label_selector=selector)["items"]}


def outside(s: ServiceLab, ip: str, url: str, timeout: float = 3.0) -> str | None:
    """curl from the outside client namespace with source address `ip`."""
    r = s.lab.exec("client", ["curl", "-s", "-m", str(timeout), "--interface", ip, url])
    return r.stdout.strip() if r.returncode == 0 else None


@contextlib.contextmanager
def request_loops(requests: dict[str, Callable[[], str | None]]) -> Iterator[dict[str, Answers]]:
    """Each request function called in a loop of its own thread until the block ends."""
    answers: dict[str, Answers] = {k: [] for k in requests}
    stop = threading.Event()

    def loop(kind: str) -> None:
        while not stop.is_set():
            at = time.monotonic()
            answers[kind].append((at, requests[kind]()))

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in requests]
    for t in threads:
        t.start()
    try:
        yield answers
    finally:
        stop.set()
        for t in threads:
            t.join(10)


@contextlib.contextmanager
def extra_client_ips(s: ServiceLab) -> Iterator[list[str]]:
    """EXTRA_IPS added to the lab's outside client namespace (a lab namespace) for the block."""
    out = s.lab.exec("client", ["ip", "-o", "-4", "addr", "show"], check=True).stdout
    dev = next(line.split()[1] for line in out.splitlines() if " 192.168.33.100/" in line)
    try:
        for ip in EXTRA_IPS:
            s.lab.exec("client", ["ip", "addr", "add", f"{ip}/24", "dev", dev], check=True)
        yield EXTRA_IPS
    finally:
        for ip in EXTRA_IPS:
            s.lab.exec("client", ["ip", "addr", "del", f"{ip}/24", "dev", dev])


def scale(s: ServiceLab, kind: str, name: str, replicas: int) -> None:
    client.patch(s.api, kind, name, {"spec": {"replicas": replicas}}, "default")


def test_s9_session_affinity_ab_test_and_shift(slab: ServiceLab) -> None:
    """Seed S9: Service node-js-scale-ab (sessionAffinity ClientIP, default timeout) over RCs a
    (v0.2) and b (v0.3), 2 pods each. One pod client: 50 requests, one backend. 16 outside
    client addresses through the NodePort: each keeps its backend and both versions are seen,
    so affinity keys on the client's own address (before the masquerade to a backend on the
    other node; the userspace proxy accepts the client's connection itself, so it sees it too).
    Then the shift b 2->3->4, a 2->1->0 under request loops (pod -> VIP, outside -> NodePort):
    no failed request (old pods drain: graceful deletion with a preStop sleep) and in the end
    every client, sticky or not, reaches v0.3."""
    labels = {"app": "node-js-scale-ab"}
    for ab, version in (("a", "0.2"), ("b", "0.3")):
        container = {"name": "node-js", "image": f"jonbaier/node-express-info:{version}",
                     "ports": [{"name": "www", "containerPort": 80}],
                     "readinessProbe": {"httpGet": {"path": "/", "port": "www"}, "periodSeconds": 1},
                     "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}
        client.create(slab.api, "ReplicationController", {"metadata": {"name": f"node-js-scale-{ab}"}, "spec": {
            "replicas": 2, "selector": {**labels, "ab": ab}, "template": {
                "metadata": {"labels": {**labels, "ab": ab}},
                "spec": {"terminationGracePeriodSeconds": 10, "containers": [container]}}}}, "default")
    service = slab.service("node-js-scale-ab", labels, type="NodePort", sessionAffinity="ClientIP",
                           ports=[{"name": "http", "port": 80, "targetPort": "www"}])
    vip_url = f"http://{service['spec']['clusterIP']}/"
    node_port_url = f"http://{NODE_IPS['node1']}:{service['spec']['ports'][0]['nodePort']}/"
    try:
        with extra_client_ips(slab) as ips:
            slab.ready("ab=a", 2)
            slab.ready("ab=b", 2)
            slab.endpoints("node-js-scale-ab", 4)
            got = collections.Counter(slab.curl("client-node1", vip_url) for _ in range(50))
            assert len(got) == 1 and None not in got, f"affinity from one pod: {got}"

            def sticky(ip: str) -> list[str | None]:
                return [outside(slab, ip, node_port_url) for _ in range(3)]

            with ThreadPoolExecutor(4) as pool:
                by_ip = dict(zip(ips, pool.map(sticky, ips), strict=True))
            for ip, picks in by_ip.items():
                assert None not in picks and len(set(picks)) == 1, f"affinity of {ip} via the NodePort: {picks}"
            assert {picks[0].split()[1] for picks in by_ip.values()} == {"0.2", "0.3"}, by_ip

            rotation = itertools.cycle(ips)
            with request_loops({"pod": lambda: slab.curl("client-node1", vip_url, timeout=3),
                                "outside": lambda: outside(slab, next(rotation), node_port_url)}) as answers:
                for a, b in ((1, 3), (0, 4)):
                    scale(slab, "ReplicationController", "node-js-scale-b", b)
                    slab.ready("ab=b", b)
                    scale(slab, "ReplicationController", "node-js-scale-a", a)
                    wait_for(lambda a=a: len(pod_names(slab, "ab=a")) == a, 40, f"{a} pod(s) of a left")
                slab.endpoints("node-js-scale-ab", 4)
                time.sleep(2)
            for kind, got_ in answers.items():
                seen = [a for _, a in got_]
                assert None not in seen, f"{kind}: {seen.count(None)} of {len(seen)} requests failed during the shift"
                assert len(seen) >= 20, f"{kind}: too few requests during the shift ({len(seen)})"
                assert seen[-1].split()[1] == "0.3", f"{kind}: still on v0.2 after the shift"
            assert "0.2" in {a.split()[1] for _, a in answers["outside"][:len(ips)]}, "v0.2 had sticky clients"
            final = [slab.curl("client-node1", vip_url) for _ in range(5)] + [outside(slab, ip, node_port_url)
                                                                             for ip in ips]
            assert all(a and a.split()[1] == "0.3" for a in final), final
    finally:
        for ab in ("a", "b"):
            client.delete(slab.api, "ReplicationController", f"node-js-scale-{ab}", "default")
        client.delete(slab.api, "Service", "node-js-scale-ab", "default")


def test_s11_endpoints_follow_delete_recreate_and_scale(slab: ServiceLab) -> None:
    """Seed S11: delete Deployment alpaca-prod: its endpoints go through <none> (the VIP then
    refuses at once, no hang); recreate it and scale to 3: the service converges to the 3 new
    pods, and over 60 requests every answer comes from one of them (no stale backend), each
    of them answering."""
    name, selector = "alpaca-prod", "app=alpaca-prod"
    slab.deployment(name, 2)
    url = f"http://{slab.service(name, {'app': name})['spec']['clusterIP']}/hostname"
    try:
        old = {p["metadata"]["name"] for p in slab.ready(selector, 2)}
        slab.endpoints(name, 2)
        assert wait_for(lambda: slab.curl("client-node1", url), 10, "alpaca-prod answering") in old
        client.delete(slab.api, "Deployment", name, "default")
        try:
            wait_for(lambda: not pod_names(slab, selector), 30, "the old pods gone")
        except AssertionError as e:  # say what is left and who owns it
            left = client.list_objects(slab.api, "Pod", "default", label_selector=selector)["items"]
            rses = client.list_objects(slab.api, "ReplicaSet", "default")["items"]
            pods = [(p["metadata"]["name"], p["metadata"].get("deletionTimestamp"),
                     p["metadata"].get("ownerReferences")) for p in left]
            owners = [(r["metadata"]["name"], r["metadata"].get("ownerReferences")) for r in rses]
            raise AssertionError(f"{e}: pods {pods}; replicasets {owners}") from None
        slab.endpoints(name, 0)
        assert not ready_endpoint_pods(slab, name)

        def refused_fast() -> bool:
            start = time.monotonic()
            r = slab.lab.exec("client-node1", ["curl", "-s", "-m", "5", url])
            return r.returncode == 7 and time.monotonic() - start < 2  # 7: refused; 28 would be a hang
        wait_for(refused_fast, 10, "the VIP without endpoints refusing at once")

        slab.deployment(name, 1)
        slab.ready(selector, 1)
        scale(slab, "Deployment", name, 3)
        new = {p["metadata"]["name"] for p in slab.ready(selector, 3)}
        assert not new & old
        slab.endpoints(name, 3)
        assert set(ready_endpoint_pods(slab, name)) == new
        wait_for(lambda: {slab.curl("client-node1", url) for _ in range(6)} <= new, 10, "answers from new pods only")
        hits = collections.Counter(slab.curl("client-node1", url) for _ in range(60))
        assert set(hits) == new, f"hits per pod {dict(hits)}, new pods {sorted(new)}"
    finally:
        client.delete(slab.api, "Deployment", name, "default")
        client.delete(slab.api, "Service", name, "default")


def server_pid(s: ServiceLab, pod: str) -> int:
    """The pid of the pod's netexec server: the process in the pod's netns running it."""
    for pid in netns.pids(s.lab.pod(pod)["netns"]):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"netexec" in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no netexec process in pod {pod}")


def test_s13_chaos_kill_a_backend(slab: ServiceLab) -> None:
    """Seed S13: SIGKILL one of three backends' server process under a request loop (pod ->
    VIP); the node agent sees it exit, the endpoint turns not ready, the container restarts.
    iptables/ebpf: connections to the dead backend are refused until its endpoint is removed,
    so failures are allowed only from the kill until shortly after that, none afterwards.
    userspace: the proxy retries a refused connect on another backend: no failure at all. The
    kill runs in the loop thread between two requests: a request the dead server had already
    accepted is lost in every mode (no proxy can replay it), and is not what is tested."""
    name, selector = "chaos", "app=chaos"
    slab.deployment(name, 3)
    url = f"http://{slab.service(name, {'app': name})['spec']['clusterIP']}/hostname"
    try:
        victim = slab.ready(selector, 3)[0]["metadata"]["name"]
        slab.endpoints(name, 3)
        pid = server_pid(slab, victim)
        killed: list[tuple[int, float]] = []  # (index of the request that ran the kill, when)
        pending: list[Callable[[], None]] = []

        def request() -> str | None:
            while pending:
                pending.pop()()
            return slab.curl("client-node1", url)

        def kill() -> None:
            os.kill(pid, signal.SIGKILL)
            killed.append((len(answers["vip"]), time.monotonic()))

        with request_loops({"vip": request}) as answers:
            time.sleep(2)
            pending.append(kill)
            wait_for(lambda: killed, 10, "the kill")
            wait_for(lambda: victim not in ready_endpoint_pods(slab, name), 10, "the victim's endpoint not ready",
                     interval=0.05)
            removed = time.monotonic()
            wait_for(lambda: victim in ready_endpoint_pods(slab, name), 30, "the restarted victim ready again")
            back = time.monotonic()
            time.sleep(4)
        got = answers["vip"]
        index, t0 = killed[0]
        assert all(a for _, a in got[:index]), "failures before the kill"
        failed = [at - t0 for at, a in got if a is None]
        if slab.mode == "userspace":
            assert not failed, f"{len(failed)} failed requests: a refused connect was not retried ({failed})"
        else:
            late = [t for t in failed if t > removed - t0 + 2]
            assert not late, f"failures after the endpoint update: {late} (removed at {removed - t0:.1f}s)"
        assert len(got) - index >= 10, "too few requests after the kill"
        after = collections.Counter(a for at, a in got if at > back + 1)
        assert None not in after and len(after) == 3 and victim in after, f"after the restart: {after}"
    finally:
        client.delete(slab.api, "Deployment", name, "default")
        client.delete(slab.api, "Service", name, "default")


def kubectl_exec(s: ServiceLab, pod: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """`kubectl exec <pod> -- <command>` with this machine's kubectl, as the material writes it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on this machine")
    proc = subprocess.run([kubectl, "--kubeconfig", controlplane.kubeconfig_path(s.lab.name), "--cache-dir",
                           os.path.join(s.lab.state_dir, "kubectl-cache"), "exec", pod, "--", *command],
                          capture_output=True, text=True, timeout=90)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl exec {pod} -- {' '.join(command)} ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.mark.parametrize("slab", ["iptables", REAL], indirect=True)  # (the data paths have their own suites)
def test_seeds_as_written_with_kubectl_exec(slab: ServiceLab) -> None:
    """The seeds the material runs as `kubectl exec <pod> -- curl ...` (and dig), typed as written
    through kubectl (exec proxied by the API server to the node agent), in one proxy mode (the
    data paths have their own suites): S1 a pod's IP from another pod; S4 the ClusterIP service
    node-js-internal by name reaches all 3 replicas; S6 node-js-90 answers on :90, not :80; S7
    node-js-multi's ports each reach their own target port; S16 the service names resolve."""
    labels = {"name": "node-js"}
    client.create(slab.api, "Deployment", {"metadata": {"name": "node-js"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "node-js", "image": "jonbaier/node-express-info:latest",
                            "ports": [{"name": "www", "containerPort": 80}, {"name": "admin", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": "www"}, "periodSeconds": 1}}]}}}},
        "default")
    services = {
        "node-js-internal": [{"port": 80}],
        "node-js-90": [{"port": 90, "targetPort": "www"}],
        "node-js-multi": [{"name": "http", "port": 80}, {"name": "fake-admin-http", "port": 8888, "targetPort": 8080}],
    }
    for name, ports in services.items():
        client.create(slab.api, "Service", {"metadata": {"name": name}, "spec": {"selector": labels, "ports": ports}},
                      "default")
    try:
        pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in slab.ready("name=node-js", 3)}
        for name in services:
            slab.endpoints(name, 3)
        # S1: curl a pod's IP from another pod: its own name answers (the http image says "<hostname> <tag>")
        pod, ip = next(iter(pods.items()))
        assert kubectl_exec(slab, "client-node1", "curl", "-s", ip).stdout.split()[0] == pod
        # S4: by the service's name, repeatedly: every replica answers
        seen = collections.Counter(
            kubectl_exec(slab, "client-node1", "sh", "-c",
                         "for i in $(seq 30); do curl -s -m 3 node-js-internal; echo; done").stdout.split("\n"))
        assert {line.split()[0] for line in seen if line} == set(pods), seen
        # S6: :90 works, :80 is no service port
        assert kubectl_exec(slab, "client-node1", "curl", "-s", "-m", "5", "node-js-90:90").stdout.split()[0] in pods
        assert kubectl_exec(slab, "client-node1", "curl", "-s", "-m", "2", "node-js-90:80", check=False).returncode != 0
        # S7: each port of node-js-multi
        for port in (80, 8888):
            got = kubectl_exec(slab, "client-node1", "curl", "-s", "-m", "5", f"node-js-multi:{port}").stdout
            assert got.split()[0] in pods, (port, got)
        # S16: the name resolves to the VIP, bare and fully qualified
        vip = client.get(slab.api, "Service", "node-js-90", "default")["spec"]["clusterIP"]
        for name in ("node-js-90", "node-js-90.default.svc.cluster.local"):
            # With autopath on (the lab's kdns), a search-path query may be answered with a CNAME
            # to the name that resolves, then its address.
            lines = kubectl_exec(slab, "client-node1", "dig", "+short", "+search", name).stdout.split()
            assert [x for x in lines if not x.endswith(".")] == [vip], lines
            assert set(lines) - {vip} <= {"node-js-90.default.svc.cluster.local."}, lines
    finally:
        client.delete(slab.api, "Deployment", "node-js", "default")
        for name in services:
            client.delete(slab.api, "Service", name, "default")
