"""kproxy in the lab, one suite for every data path (the same assertions for each).

A 3-node lab per mode with the control plane: Services and EndpointSlices come from the lab API
server, pods from the node agents, and every probe is a real client: curl inside a pod (in the
node's pod cgroup, as a container runs) or in the lab's outside client namespace.
"""

from __future__ import annotations

import collections
import json
import os
import re
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from knet.kube import client
from knet_testing import anchors
from kproxy import backend as backends
from kproxy.metrics import KUBE_PROXY_NAMES, MODE_NAMES
from lab import api
from lab.bringup import controlplane
from tests.integration.controlplane.cp_helpers import wait_for
from tests.integration.lab_names import new_lab_name
from tests.promtext import samples, value

pytestmark = pytest.mark.integration
MODES = list(backends.MODES)  # every mode kproxy has: a new one joins every lab suite
NODE_IPS = {"node1": "192.168.33.11", "node2": "192.168.33.12", "node3": "192.168.33.13"}
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.39"


class ServiceLab:
    def __init__(self, lab: api.Lab, mode: str) -> None:
        self.lab = lab
        self.mode = mode
        kubeconfig = controlplane.kubeconfig_path(lab.name)
        controlplane.loopback_only(kubeconfig)  # this process is in the root namespace
        self.api = client.new_api_client(kubeconfig)

    def deployment(self, name: str, replicas: int, node: str | None = None, labels: dict | None = None) -> None:
        labels = labels or {"app": name}
        spec: dict = {"containers": [{"name": "netexec", "image": AGNHOST,
                                      "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                                      "ports": [{"name": "http", "containerPort": 8080},
                                                {"name": "udp", "containerPort": 8081, "protocol": "UDP"}],
                                      "readinessProbe": {"httpGet": {"path": "/hostname", "port": 8080},
                                                         "periodSeconds": 1}}]}
        if node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        client.create(self.api, "Deployment", {
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}, "default")

    def service(self, name: str, selector: dict, **spec) -> dict:
        body = {"metadata": {"name": name},
                "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                         **spec}}
        return client.create(self.api, "Service", body, "default")

    def client_pod(self, name: str, node: str) -> None:
        client.create(self.api, "Pod", {"metadata": {"name": name, "labels": {"role": "client"}}, "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "c", "image": AGNHOST, "args": ["pause"]}]}}, "default")

    def ready(self, selector: str, count: int) -> list[dict]:
        def check():
            pods = client.list_objects(self.api, "Pod", "default", label_selector=selector)["items"]
            ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p.get("status", {}).get("conditions", []))]
            return ready if len(ready) == count else None
        return wait_for(check, 40, f"{count} ready pods for {selector}")

    def endpoints(self, service: str, count: int) -> None:
        def check():
            slices = client.list_objects(self.api, "EndpointSlice", "default",
                                         label_selector=f"kubernetes.io/service-name={service}")["items"]
            ready = [e for s in slices for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready")]
            return len(ready) == count
        wait_for(check, 30, f"{count} ready endpoints of {service}")

    def serving(self, service: str, count: int, clients: tuple[str, ...] = ("client-node1", "client-node3")) -> None:
        """Until the service proxy of every client's node has the service's `count` backends (the
        API's endpoints come first; the data path follows at the proxy's own pace)."""
        vip = svc(self, service)["spec"]["clusterIP"]
        for where in clients:
            wait_for(lambda w=where: len({self.curl(w, f"http://{vip}/hostname") for _ in range(3 * count)} - {None})
                     == count, 60, f"{service}'s {count} backends through the proxy from {where}")

    def curl(self, where: str, url: str, timeout: float = 2.0) -> str | None:
        """The body, or None when the request failed (refused, dropped, timed out)."""
        r = self.lab.exec(where, ["curl", "-s", "-m", str(timeout), url])
        return r.stdout.strip() if r.returncode == 0 else None


def up_lab(request: pytest.FixtureRequest, **kw) -> api.Lab:
    """A lab for the proxy mode `request.param` (`kw`: api.up's), torn down with the fixture."""
    if request.param == "ebpf":
        try:
            import bcc  # noqa: F401
        except ImportError:
            pytest.fail("bcc is not importable: scripts/install-deps links Debian's python3-bpfcc into .venv")
    return api.up(new_lab_name(request), **kw)


# Also against the upstream control plane (`knet lab up --control-plane real`: kube-apiserver and
# kube-controller-manager), in one proxy mode: the daemons and their RBAC are what changes.
REAL = "iptables+real"


@pytest.fixture(scope="module", params=[*MODES, REAL])
def slab(request: pytest.FixtureRequest) -> Iterator[ServiceLab]:
    mode, _, variant = request.param.partition("+")
    if variant == "real" and (why := anchors.real_control_plane_missing()):
        pytest.skip(f"--control-plane real: {why}")
    # the ingress controller (nginx) only in one mode's lab: it is proven on its own elsewhere
    lab = up_lab(request, nodes=3, control_plane=variant or True, proxy_mode=mode, ingress=mode == "iptables")
    s = ServiceLab(lab, mode)
    s.deployment("web", 3)
    s.deployment("solo", 1, node="node1", labels={"app": "solo"})
    for node in ("node1", "node3"):
        s.client_pod(f"client-{node}", node)
    s.service("web", {"app": "web"}, type="NodePort")
    s.service("sticky", {"app": "web"}, sessionAffinity="ClientIP",
              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 3}})
    s.service("solo-local", {"app": "solo"}, type="NodePort", externalTrafficPolicy="Local")
    s.service("lb", {"app": "web"}, type="LoadBalancer")
    s.service("nobody", {"app": "nobody"})
    s.ready("app=web", 3)
    s.ready("app=solo", 1)
    s.ready("role=client", 2)
    s.endpoints("web", 3)
    s.endpoints("solo-local", 1)
    s.serving("web", 3)
    try:
        yield s
    finally:
        s.api.close()


def svc(s: ServiceLab, name: str) -> dict:
    return client.get(s.api, "Service", name, "default")


def test_cluster_ip_from_pods_on_every_node_reaches_every_backend(slab: ServiceLab) -> None:
    vip = svc(slab, "web")["spec"]["clusterIP"]
    for node in ("node1", "node3"):
        seen = collections.Counter(slab.curl(f"client-{node}", f"http://{vip}/hostname") for _ in range(30))
        assert None not in seen, f"failed requests from {node}: {seen}"
        assert len(seen) == 3, seen
    assert slab.curl("client", f"http://{vip}/hostname", timeout=1) is None, "a ClusterIP is not reachable from outside"


def test_node_port_on_every_node_from_outside(slab: ServiceLab) -> None:
    node_port = svc(slab, "web")["spec"]["ports"][0]["nodePort"]
    for node, ip in NODE_IPS.items():
        got = {slab.curl("client", f"http://{ip}:{node_port}/hostname") for _ in range(6)}
        assert None not in got and got, f"NodePort on {node}: {got}"


def test_load_balancer_address_from_outside(slab: ServiceLab) -> None:
    """Seed S8: an address from the lab pool in the status, reachable from outside, a node port as
    well; a NodePort service turned LoadBalancer keeps its node port; a deleted one stops answering."""
    def lb_ip(name: str = "lb"):
        ingress = svc(slab, name).get("status", {}).get("loadBalancer", {}).get("ingress") or []
        return ingress[0].get("ip") if ingress else None
    ip = wait_for(lb_ip, 15, "a LoadBalancer address")
    assert wait_for(lambda: slab.curl("client", f"http://{ip}/hostname"), 10, "an answer on the LB address")
    assert svc(slab, "lb")["spec"]["ports"][0]["nodePort"]
    node_port = slab.service("np2lb", {"app": "web"}, type="NodePort")["spec"]["ports"][0]["nodePort"]
    try:
        client.patch(slab.api, "Service", "np2lb", {"spec": {"type": "LoadBalancer"}}, "default")
        ip2 = wait_for(lambda: lb_ip("np2lb"), 15, "an address for the former NodePort service")
        assert svc(slab, "np2lb")["spec"]["ports"][0]["nodePort"] == node_port
        assert wait_for(lambda: slab.curl("client", f"http://{ip2}/hostname"), 10, "an answer on its address")
        assert slab.curl("client", f"http://{NODE_IPS['node2']}:{node_port}/hostname")
    finally:
        client.delete(slab.api, "Service", "np2lb", "default")
    wait_for(lambda: slab.curl("client", f"http://{ip2}/hostname", timeout=1) is None, 10,
             "the deleted service's address to stop answering")


def test_client_ip_affinity_holds(slab: ServiceLab) -> None:
    vip = svc(slab, "sticky")["spec"]["clusterIP"]
    seen = {slab.curl("client-node1", f"http://{vip}/hostname") for _ in range(15)}
    assert len(seen) == 1 and None not in seen, seen


def test_service_without_endpoints_is_refused_fast(slab: ServiceLab) -> None:
    vip = svc(slab, "nobody")["spec"]["clusterIP"]
    start = time.monotonic()
    r = slab.lab.exec("client-node1", ["curl", "-s", "-m", "5", f"http://{vip}/"])
    assert r.returncode == 7, (r.returncode, r.stderr)  # 7: connection refused, not a timeout (28)
    assert time.monotonic() - start < 2


def test_local_policy_only_on_the_node_with_the_pod(slab: ServiceLab) -> None:
    node_port = svc(slab, "solo-local")["spec"]["ports"][0]["nodePort"]
    answer = slab.curl("client", f"http://{NODE_IPS['node1']}:{node_port}/clientip")
    assert answer is not None
    if slab.mode != "userspace":  # the userspace proxy opens its own connection (documented)
        assert answer.split(":")[0] == "192.168.33.100"
    assert slab.curl("client", f"http://{NODE_IPS['node2']}:{node_port}/clientip", timeout=1.5) is None


def test_scale_down_and_up_is_followed(slab: ServiceLab) -> None:
    vip = svc(slab, "web")["spec"]["clusterIP"]
    client.patch(slab.api, "Deployment", "web", {"spec": {"replicas": 1}}, "default")
    slab.endpoints("web", 1)

    def one_backend_answers() -> bool:
        got = {slab.curl("client-node3", f"http://{vip}/hostname") for _ in range(8)}
        return len(got) == 1 and None not in got
    # A generous deadline (the machine is shared): the data path follows the slice, however long that takes here.
    wait_for(one_backend_answers, 20, "only the remaining backend, and every request answered", interval=0.2)
    client.patch(slab.api, "Deployment", "web", {"spec": {"replicas": 3}}, "default")
    slab.ready("app=web", 3)
    slab.endpoints("web", 3)
    wait_for(lambda: len({slab.curl("client-node3", f"http://{vip}/hostname") for _ in range(20)}) == 3,
             10, "all three backends again")


def test_no_kproxy_left_failing(slab: ServiceLab) -> None:
    """Every node's kproxy is alive and synced (its log says so; its /metrics is in the node)."""
    for short in NODE_IPS:
        log = os.path.join(slab.lab.state_dir, short, "kproxy.log")
        with open(log) as f:
            text = f.read()
        assert "sync full=True" in text and "fatal" not in text
        metrics = slab.lab.exec(short, ["curl", "-s", f"http://{NODE_IPS[short]}:10249/metrics"]).stdout
        assert "kubeproxy_sync_proxy_rules_duration_seconds_count" in metrics


def family_names(text: str) -> set[str]:
    """The metric names an exposition declares (counters with the `_total` the parser strips)."""
    return {f.name + "_total" if f.type == "counter" else f.name for f in text_string_to_metric_families(text)}


def scrape(slab: ServiceLab, node: str) -> str:
    return slab.lab.exec(node, ["curl", "-s", "-m", "5", f"http://{NODE_IPS[node]}:10249/metrics"]).stdout


def test_metrics_under_kube_proxys_names(slab: ServiceLab) -> None:
    """Issue 16: the names a running kproxy serves are kube-proxy's (the list in kproxy.metrics,
    which follows pkg/proxy/metrics), and they count what happened: a Service change is counted,
    programmed, and timed from the change to the data path."""
    before = value(scrape(slab, "node1"), "kubeproxy_sync_proxy_rules_service_changes_total") or 0.0
    slab.service("counted", {"app": "web"})
    vip = svc(slab, "counted")["spec"]["clusterIP"]
    wait_for(lambda: slab.curl("client-node1", f"http://{vip}/hostname"), 20, "the new Service through the proxy")
    text = scrape(slab, "node1")
    names = {name for name, _ in samples(text)}
    expected = set(KUBE_PROXY_NAMES) | set(MODE_NAMES[slab.mode])
    assert {n for n in family_names(text) if n.startswith("kubeproxy_")} == expected
    assert value(text, "kubeproxy_sync_proxy_rules_service_changes_total") > before
    assert value(text, "kubeproxy_network_programming_duration_seconds_count", ip_family="IPv4") >= 1
    assert value(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", ip_family="IPv4") > time.time() - 600
    assert value(text, "kubeproxy_sync_full_proxy_rules_duration_seconds_count", ip_family="IPv4") >= 1
    assert value(text, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count", ip_family="IPv4") >= 1
    assert "process_cpu_seconds_total" in names  # prometheus_client's process metrics alongside


def test_healthz_as_kube_proxy_answers_it(slab: ServiceLab) -> None:
    """kube-proxy's /healthz and /livez on :10256: 200 and its JSON body."""
    for path in ("/healthz", "/livez"):
        r = slab.lab.exec("client", ["curl", "-s", "-m", "5", "-w", "\n%{http_code}",
                                     f"http://{NODE_IPS['node2']}:10256{path}"])
        body, _, code = r.stdout.rpartition("\n")
        assert code == "200", (path, r.stdout)
        doc = json.loads(body)
        assert set(doc) == ({"lastUpdated", "currentTime", "nodeEligible"} if path == "/healthz"
                            else {"lastUpdated", "currentTime"})
        assert doc["currentTime"].endswith("UTC") or " UTC m=+" in doc["currentTime"]


def test_health_check_node_port_of_a_local_load_balancer(slab: ServiceLab) -> None:
    """A LoadBalancer Service with externalTrafficPolicy Local gets a healthCheckNodePort from the
    API server, and every node's kproxy serves it there, as cloud load balancers probe it: 200
    with the local endpoint count on the node that runs the Service's pod, 503 elsewhere."""
    service = slab.service("solo-lb", {"app": "solo"}, type="LoadBalancer", externalTrafficPolicy="Local")
    try:
        port = service["spec"].get("healthCheckNodePort")
        assert port, "the API server allocates a healthCheckNodePort for a Local LoadBalancer"
        slab.endpoints("solo-lb", 1)

        def probe(node: str) -> tuple[str, dict] | None:
            r = slab.lab.exec("client", ["curl", "-s", "-m", "3", "-w", "\n%{http_code}",
                                         f"http://{NODE_IPS[node]}:{port}/"])
            body, _, code = r.stdout.rpartition("\n")
            return (code, json.loads(body)) if r.returncode == 0 and body else None

        code, doc = wait_for(lambda: (got := probe("node1")) and got[0] == "200" and got, 20,
                             "node1's health check to report its local endpoint")
        assert doc == {"service": {"namespace": "default", "name": "solo-lb"}, "localEndpoints": 1,
                       "serviceProxyHealthy": True}
        code, doc = wait_for(lambda: probe("node2"), 20, "node2's health check to answer")
        assert code == "503" and doc["localEndpoints"] == 0
    finally:
        client.delete(slab.api, "Service", "solo-lb", "default")
    wait_for(lambda: slab.lab.exec("client", ["curl", "-s", "-m", "2", f"http://{NODE_IPS['node1']}:{port}/"])
             .returncode != 0, 20, "the health check server to close with its Service")


def test_cluster_dns_through_the_service_proxy(slab: ServiceLab) -> None:
    """Pods resolve through kube-dns's ClusterIP (kdns behind kproxy): search path, other
    namespaces' long form, and names outside the cluster forwarded to the lab's upstream."""
    vip = svc(slab, "web")["spec"]["clusterIP"]

    def resolve(name: str) -> str | None:
        r = slab.lab.exec("client-node3", ["getent", "hosts", name])
        return r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else None

    assert resolve("web") == vip  # bare name via the search path
    assert resolve("web.default") == vip
    assert resolve("kube-dns.kube-system") == "10.96.0.10"
    assert resolve("example.com") == "192.168.33.100"  # forwarded upstream
    # the lab's Corefile has a stub domain with a server of its own, which the upstream lacks
    assert resolve("db.corp.lab") == "192.168.33.101"
    assert resolve("no-such-service") is None
    assert slab.curl("client-node3", "http://web/hostname")  # and by name all the way to a backend


def test_autopath_answers_a_pods_external_lookup_in_one_query(slab: ServiceLab) -> None:
    """Issue 22: the lab's Corefile has `pods verified` + `autopath @kubernetes`. A pod looking up
    a name outside the cluster with its resolv.conf (ndots:5, its namespace's search path) sends
    kdns one query, answered with a CNAME to the name and its address; a pod of another namespace
    gets its own search path; a source that is no pod gets no autopath. (One mode's lab: kdns does
    the same behind any proxy that keeps the pod's source address, which userspace does not.)"""
    if slab.mode != "iptables":
        pytest.skip("autopath is kdns's, the same behind every proxy mode: proven in the iptables-mode lab")
    from lab.bringup import dns
    from lab.net import topology

    def counters() -> tuple[float, float]:
        r = slab.lab.exec("ctl", ["curl", "-s", "-m", "5", f"http://{topology.CTL_IP}:{dns.METRICS_PORT}/metrics"])
        assert r.returncode == 0, r.stderr
        fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}
        return tuple(sum(s.value for s in fams[name].samples if s.name.endswith("_total"))  # type: ignore[return-value]
                     for name in ("coredns_dns_requests", "coredns_autopath_success"))

    client.create(slab.api, "Namespace", {"metadata": {"name": "apath"}})
    client.create(slab.api, "Pod", {"metadata": {"name": "asker"}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": "node1"},
        "containers": [{"name": "c", "image": AGNHOST, "args": ["pause"]}]}}, "apath")
    try:
        def running() -> bool:
            pod = client.get(slab.api, "Pod", "asker", "apath") or {}
            return bool(pod.get("status", {}).get("podIP")) and pod["status"].get("phase") == "Running"

        wait_for(running, 40, "a pod in namespace apath")
        for target, ns in (("client-node3", "default"), ("asker", "apath")):
            r = slab.lab.exec(target, ["cat", "/etc/resolv.conf"], namespace=ns)
            assert f"search {ns}.svc.cluster.local" in r.stdout and "ndots:5" in r.stdout, r.stdout
            # kdns learns the pod's address from its pod informer (pods verified): lookups before
            # that are not autopathed. Wait until one is, then count one lookup exactly.
            def autopathed(t: str = target, n: str = ns) -> bool:
                _, paths = counters()
                slab.lab.exec(t, ["getent", "ahostsv4", "www.example.com"], namespace=n)
                return counters()[1] > paths
            wait_for(autopathed, 60, f"kdns to know {target}'s address (autopath)")
            before, autopaths = counters()
            r = slab.lab.exec(target, ["getent", "ahostsv4", "www.example.com"], namespace=ns)
            assert r.returncode == 0 and r.stdout.split()[:3] == ["192.168.33.100", "STREAM", "www.example.com"], \
                r.stdout
            after, autopaths_after = counters()
            # one query (www.example.com.<ns>.svc.cluster.local, type A) reached kdns, answered with a
            # CNAME to www.example.com and its address: without autopath, four (one per search domain)
            assert (after - before, autopaths_after - autopaths) == (1, 1), (target, before, after)
        q = slab.lab.exec(target, ["dig", "+tries=1", "+time=3", f"@{dns.dns_service_ip()}",
                                   "www.example.com.apath.svc.cluster.local"], namespace="apath").stdout
        assert "status: NOERROR" in q and re.search(r"\sCNAME\s+www\.example\.com\.", q), q
        # The lab's outside client is no pod: its expansion is answered as asked (NXDOMAIN).
        before, autopaths = counters()
        q = slab.lab.exec("client", ["dig", "+tries=1", "+time=3", f"@{topology.CTL_IP}",
                                     "www.example.com.default.svc.cluster.local"]).stdout
        assert "status: NXDOMAIN" in q, q
        assert counters()[1] == autopaths
    finally:
        client.delete(slab.api, "Pod", "asker", "apath")
        client.delete(slab.api, "Namespace", "apath")


def test_ingress_virtual_hosts_through_the_load_balancer(slab: ServiceLab) -> None:
    """Seed S21: the lab's ingress controller behind its LoadBalancer Service routes by host."""
    if slab.mode != "iptables":
        pytest.skip("the ingress controller runs in the iptables-mode lab only")
    be = lambda svc: {"service": {"name": svc, "port": {"number": 80}}}  # noqa: E731
    client.create(slab.api, "Ingress", {
        "metadata": {"name": "whale"},
        "spec": {"defaultBackend": be("sticky"),
                 "rules": [{"host": "a.whale.hey", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix", "backend": be("web")}]}}]}}, "default")

    def lb_ip():
        ingress = client.get(slab.api, "Service", "knet-ingress", "knet-system").get("status", {})
        ips = ingress.get("loadBalancer", {}).get("ingress") or []
        return ips[0].get("ip") if ips else None
    ip = wait_for(lb_ip, 15, "the ingress LoadBalancer address")
    web = {p["metadata"]["name"] for p in client.list_objects(slab.api, "Pod", "default",
                                                               label_selector="app=web")["items"]}

    def hostname_via(host: str) -> str | None:
        r = slab.lab.exec("client", ["curl", "-s", "-m", "3", "--resolve", f"{host}:80:{ip}", f"http://{host}/hostname"])
        return r.stdout.strip() if r.returncode == 0 else None
    assert wait_for(lambda: hostname_via("a.whale.hey") in web, 20, "a.whale.hey routed to the web pods")
    assert hostname_via("unknown.whale.hey") in web  # default backend: the sticky service, same pods


def test_zero_downtime_rolling_update(slab: ServiceLab) -> None:
    """Seed S12: a client loop against the ClusterIP (from a pod) and the NodePort (from outside,
    through a node that may run no backend) while the Deployment rolls 0.1 -> 0.2 with maxSurge 1
    / maxUnavailable 0: no failed request, and the version seen flips. Old pods drain: deleted
    gracefully, their endpoints turn terminating (no new connections) while a preStop sleep keeps
    them serving what is in flight. Then a bad image (busybox:22 crash-loops): the rollout stalls
    and the old pods keep serving."""
    container = {"name": "web", "image": "jonbaier/node-express-info:0.1",
                 "ports": [{"name": "www", "containerPort": 80}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "www"}, "periodSeconds": 1},
                 "lifecycle": {"preStop": {"sleep": {"seconds": 2}}}}
    client.create(slab.api, "Deployment", {"metadata": {"name": "roll"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "roll"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {"app": "roll"}},
                     "spec": {"terminationGracePeriodSeconds": 10, "containers": [container]}}}}, "default")
    service = slab.service("roll", {"app": "roll"}, type="NodePort",
                           ports=[{"name": "http", "port": 80, "targetPort": "www"}])
    try:
        slab.ready("app=roll", 2)
        slab.endpoints("roll", 2)
        urls = {"vip": ("client-node1", f"http://{service['spec']['clusterIP']}/"),
                "nodeport": ("client", f"http://{NODE_IPS['node3']}:{service['spec']['ports'][0]['nodePort']}/")}
        for where, url in urls.values():  # the data path follows the new Service within its sync pacing
            wait_for(lambda where=where, url=url: slab.curl(where, url), 15, f"a first answer from {url}")
        answers: dict[str, list] = {k: [] for k in urls}
        stop = threading.Event()

        def loop(kind: str) -> None:
            where, url = urls[kind]
            while not stop.is_set():
                answers[kind].append(slab.curl(where, url, timeout=3))

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in urls]
        for t in threads:
            t.start()

        def versions() -> set[str]:
            pods = client.list_objects(slab.api, "Pod", "default", label_selector="app=roll")["items"]
            return {p["spec"]["containers"][0]["image"].rsplit(":", 1)[1] for p in pods}

        try:
            time.sleep(1)
            client.patch(slab.api, "Deployment", "roll", {"spec": {"template": {"spec": {"containers": [
                dict(container, image="jonbaier/node-express-info:0.2")]}}}}, "default")
            wait_for(lambda: versions() == {"0.2"} and slab.ready("app=roll", 2), 60, "the rollout to 0.2")
            time.sleep(1)
            rolled = {k: len(v) for k, v in answers.items()}
            client.patch(slab.api, "Deployment", "roll", {"spec": {"template": {"spec": {"containers": [
                dict(container, image="busybox:22")]}}}}, "default")
            time.sleep(4)
            assert versions() == {"0.2", "22"}, "the bad image's pod exists (and crash-loops)"
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        for kind, got in answers.items():
            failed = [i for i, a in enumerate(got) if not a]
            assert not failed, f"{kind}: {len(failed)} of {len(got)} requests failed (at {failed[:10]})"
            seen = [a.rsplit(" ", 1)[1] for a in got]
            assert seen[0] == "0.1" and seen[rolled[kind] - 1] == "0.2", f"{kind}: {collections.Counter(seen)}"
            assert set(seen[rolled[kind]:]) == {"0.2"}, f"{kind}: the bad image took traffic"
            assert len(got) - rolled[kind] >= 5, f"{kind}: too few requests during the stalled rollout"
    finally:
        client.delete(slab.api, "Deployment", "roll", "default")
        client.delete(slab.api, "Service", "roll", "default")


def test_frontend_reaches_backend_by_name(slab: ServiceLab) -> None:
    """Seed S20: a frontend behind NodePort 31000 calls its backend by the Service name: an
    outside request to any node's 31000 comes back with data the frontend fetched through the
    cluster DNS (search path) and the backend's ClusterIP."""
    client.create(slab.api, "Deployment", {"metadata": {"name": "frontend"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "frontend"}},
        "template": {"metadata": {"labels": {"app": "frontend"}}, "spec": {"containers": [
            {"name": "fe", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
             "ports": [{"name": "http", "containerPort": 8080}]}]}}}}, "default")
    slab.service("frontend", {"app": "frontend"}, type="NodePort",
                 ports=[{"name": "http", "port": 80, "targetPort": "http", "nodePort": 31000}])
    try:
        slab.ready("app=frontend", 1)
        slab.endpoints("frontend", 1)
        web = {p["metadata"]["name"] for p in client.list_objects(slab.api, "Pod", "default",
                                                                   label_selector="app=web")["items"]}
        dial = "/dial?request=hostname&host=web&port=80&protocol=http&tries=1"
        for ip in NODE_IPS.values():
            body = wait_for(lambda ip=ip: slab.curl("client", f"http://{ip}:31000{dial}", timeout=5), 10,
                            f"an answer through {ip}:31000")
            responses = json.loads(body).get("responses") or []
            assert len(responses) == 1 and responses[0] in web, body
    finally:
        client.delete(slab.api, "Deployment", "frontend", "default")
        client.delete(slab.api, "Service", "frontend", "default")


def test_internal_local_policy_and_external_ips(slab: ServiceLab) -> None:
    """internalTrafficPolicy Local: a pod reaches only endpoints on its own node (none there: no
    answer, not a remote one). externalIPs: the service answers on an address the outside routes
    to the nodes (192.168.33.199, in the client's route to the nodes, outside the LB pool)."""
    solo = slab.ready("app=solo", 1)[0]["metadata"]["name"]
    internal = slab.service("solo-internal", {"app": "solo"}, internalTrafficPolicy="Local")
    external = slab.service("solo-external", {"app": "solo"}, externalIPs=["192.168.33.199"])
    try:
        slab.endpoints("solo-internal", 1)
        vip = internal["spec"]["clusterIP"]
        assert wait_for(lambda: slab.curl("client-node1", f"http://{vip}/hostname"), 10, "the local endpoint") == solo
        assert slab.curl("client-node3", f"http://{vip}/hostname", timeout=1.5) is None
        assert external["spec"]["externalIPs"] == ["192.168.33.199"]
        assert wait_for(lambda: slab.curl("client", "http://192.168.33.199/hostname"), 10, "the external IP") == solo
    finally:
        for name in ("solo-internal", "solo-external"):
            client.delete(slab.api, "Service", name, "default")


def test_statefulset_pods_by_stable_name(slab: ServiceLab) -> None:
    """Seed S17 (StatefulSet part): whaleset-0..2 made in order behind the headless sayhey-svc;
    `whaleset-1.sayhey-svc` resolves (cluster DNS, search path) to that pod and curl by that name
    reaches exactly it; a deleted pod comes back under its name (and its name follows its new
    address); scaling down removes the highest ordinal."""
    client.create(slab.api, "Service", {"metadata": {"name": "sayhey-svc"}, "spec": {
        "clusterIP": "None", "selector": {"app": "whale"}, "ports": [{"name": "http", "port": 8080}]}}, "default")
    client.create(slab.api, "StatefulSet", {"metadata": {"name": "whaleset"}, "spec": {
        "replicas": 3, "serviceName": "sayhey-svc", "selector": {"matchLabels": {"app": "whale"}},
        "template": {"metadata": {"labels": {"app": "whale"}}, "spec": {"containers": [
            {"name": "whale", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
             "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/hostname", "port": 8080}, "periodSeconds": 1}}]}}}}, "default")

    def by_name(name: str) -> str | None:
        return slab.curl("client-node1", f"http://{name}.sayhey-svc:8080/hostname")

    try:
        pods = sorted(slab.ready("app=whale", 3), key=lambda p: p["metadata"]["name"])
        assert [p["metadata"]["name"] for p in pods] == ["whaleset-0", "whaleset-1", "whaleset-2"]
        created = [p["metadata"]["creationTimestamp"] for p in pods]
        assert created == sorted(created), "made in ordinal order"
        assert all(p["spec"]["hostname"] == p["metadata"]["name"] and p["spec"]["subdomain"] == "sayhey-svc"
                   for p in pods)
        for i in range(3):
            assert wait_for(lambda i=i: by_name(f"whaleset-{i}"), 10, f"whaleset-{i} by name") == f"whaleset-{i}"
        client.delete(slab.api, "Pod", "whaleset-0", "default")
        back = wait_for(lambda: (p := client.get(slab.api, "Pod", "whaleset-0", "default")) and
                        p["metadata"]["uid"] != pods[0]["metadata"]["uid"] and p["status"].get("podIP") and p,
                        30, "whaleset-0 made again")
        assert wait_for(lambda: by_name("whaleset-0"), 15, "whaleset-0 by name again") == "whaleset-0"
        resolved = slab.lab.exec("client-node1", ["getent", "hosts", "whaleset-0.sayhey-svc"]).stdout.split()
        assert resolved[:1] == [back["status"]["podIP"]], f"whaleset-0 resolves to {resolved}"
        client.patch(slab.api, "StatefulSet", "whaleset", {"spec": {"replicas": 2}}, "default")
        wait_for(lambda: client.get(slab.api, "Pod", "whaleset-2", "default") is None, 20, "whaleset-2 removed")
        sts = wait_for(lambda: (s := client.get(slab.api, "StatefulSet", "whaleset", "default"))
                       and s["status"].get("readyReplicas") == 2 and s, 10, "the status at 2")
        assert sts["status"]["replicas"] == 2
    finally:
        client.delete(slab.api, "StatefulSet", "whaleset", "default")
        client.delete(slab.api, "Service", "sayhey-svc", "default")
