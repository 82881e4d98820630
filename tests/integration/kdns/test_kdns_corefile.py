"""kdns driven by a Corefile, as the `coredns` ConfigMap drives it in a cluster, with pods asking.

kdns runs in the `ktd…` namespace on 10.96.0.11:53 with `kubernetes ... { pods verified }`,
`autopath @kubernetes`, a forward to a FakeUpstream, `cache` with denial/prefetch options, a stub
domain block (`stale.test`) with `serve_stale`, and `reload`. Two pod namespaces hang off it by
veth (10.244.7.7 in `default`, 10.244.8.8 in `my-ns`; both are Pods in the API server), so the
source address of their queries is a pod's: glibc (`getent`) resolves with a pod's resolv.conf
(ndots:5, the search path of its namespace), bind-mounted in a private mount namespace.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from knet import netns
from knet.kube import client as kc
from knet_testing.apiserver_env import free_port, start, stop, tail, wait_for
from knet_testing.kdns import FakeUpstream, query
from tests.integration.kdns.conftest import ApiServer, own_netns

pytestmark = pytest.mark.integration
DNS_IP = "10.96.0.11"
Z = "cluster.local"


@dataclass
class PodNet:
    namespace: str  # the Kubernetes namespace of the pod
    netns: str
    ip: str
    resolv: str


@pytest.fixture(scope="module")
def pod_nets(dns_netns: str, workdir: str) -> Iterator[list[PodNet]]:
    """Two pod network namespaces, each a veth away from the DNS namespace."""
    with contextlib.ExitStack() as stack:
        nets = []
        for i, (ns, subnet) in enumerate((("default", 7), ("my-ns", 8))):
            name = stack.enter_context(own_netns())
            ip, gw = f"10.244.{subnet}.7", f"10.244.{subnet}.1"
            for argv in (["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"kdh{i}",
                          "netns", dns_netns],
                         ["ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0"],
                         ["ip", "-n", name, "link", "set", "eth0", "up"],
                         ["ip", "-n", name, "link", "set", "lo", "up"],
                         ["ip", "-n", name, "route", "add", "default", "via", gw],
                         ["ip", "-n", dns_netns, "addr", "add", f"{gw}/24", "dev", f"kdh{i}"],
                         ["ip", "-n", dns_netns, "link", "set", f"kdh{i}", "up"]):
                subprocess.run(argv, check=True)
            resolv = os.path.join(workdir, f"resolv-{ns}.conf")
            with open(resolv, "w") as f:
                f.write(f"nameserver {DNS_IP}\nsearch {ns}.svc.{Z} svc.{Z} {Z}\noptions ndots:5 timeout:2 attempts:2\n")
            nets.append(PodNet(ns, name, ip, resolv))
        yield nets


COREFILE = """
.:53 {{
    bind {dns}
    errors
    log
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    prometheus 127.0.0.1:{metrics}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods verified
        fallthrough in-addr.arpa ip6.arpa
        ttl {ttl}
        kubeconfig {kubeconfig}
    }}
    autopath @kubernetes
    forward . 127.0.0.2:{upstream} {{
        policy sequential
        max_concurrent 100
        health_check 200ms
    }}
    cache 30 {{
        denial 1024 30 1
        prefetch 2 1m 60%
    }}
    loop
    reload 2s 1s
    loadbalance
}}
stale.test:53 {{
    bind {dns}
    forward . 127.0.0.3:{stale}
    cache {{
        success 1024 1 1
        serve_stale 1h verify 7
    }}
}}
"""


@dataclass
class Env:
    netns: str
    corefile: str
    values: dict
    proc: subprocess.Popen
    log: str
    upstream: FakeUpstream
    stale: FakeUpstream

    def write(self, **changes: object) -> None:
        with open(self.corefile + ".new", "w") as f:
            f.write(COREFILE.format(**{**self.values, **changes}))
        os.replace(self.corefile + ".new", self.corefile)

    def dig(self, *args: str) -> str:
        argv = ["dig", f"@{DNS_IP}", "+tries=1", "+time=3", "+nocookie", *args]
        return netns.run(self.netns, argv, capture_output=True, text=True, timeout=20).stdout

    def http(self, port_key: str, path: str) -> tuple[int, str]:
        with netns.enter(self.netns):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.values[port_key]}{path}", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except OSError:
                return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        _, text = self.http("metrics", "/metrics")
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


@pytest.fixture(scope="module")
def env(dns_netns: str, apiserver: ApiServer, world: dict, kube, pod_nets: list[PodNet],
        workdir: str) -> Iterator[Env]:
    subprocess.run(["ip", "-n", dns_netns, "addr", "replace", f"{DNS_IP}/32", "dev", "lo"], check=True)
    with netns.enter(dns_netns):
        upstream = FakeUpstream("127.0.0.2", {"www.example.com": ["192.0.2.53"],
                                              "pool.example.com": ["192.0.2.71", "192.0.2.72", "192.0.2.73"],
                                              "big.example.test": [f"198.51.100.{i}" for i in range(1, 101)]},
                                ttl=60, negative_ttl=10)
        stale = FakeUpstream("127.0.0.3", {"www.stale.test": ["192.0.2.99"]}, ttl=1)
    values = dict(dns=DNS_IP, health=free_port(), ready=free_port(), metrics=free_port(), ttl=5,
                  kubeconfig=apiserver.netns_kubeconfig, upstream=upstream.port, stale=stale.port)
    corefile = os.path.join(workdir, "Corefile")
    for name, ip in (("client", pod_nets[0].ip), ("client", pod_nets[1].ip)):
        ns = pod_nets[0].namespace if ip == pod_nets[0].ip else pod_nets[1].namespace
        kc.create(kube, "Pod", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                "spec": {"containers": [{"name": "c", "image": "agnhost"}]}}, ns)
        kc.patch_status(kube, "Pod", name, {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}, ns)
    log = os.path.join(workdir, "kdns-corefile.log")
    with upstream, stale:
        e = Env(dns_netns, corefile, values, None, log, upstream, stale)  # type: ignore[arg-type]
        e.write()
        e.proc = start(netns.exec_argv(dns_netns, [sys.executable, "-m", "kdns.daemon", "--conf", corefile,
                                                  "--log-level", "debug"]), log)
        try:
            wait_for(lambda: e.http("ready", "/ready")[0] == 200, 60, "kdns from the Corefile", e.proc, log)
            # Both pods known (pods verified publishes their a-b-c-d names once the informer has them).
            wait_for(lambda: all(e.dig("+short", f"{p.ip.replace('.', '-')}.{p.namespace}.pod.{Z}").strip() == p.ip
                                 for p in pod_nets), 20, "the pods in kdns", e.proc, log)
            yield e
        finally:
            code = stop(e.proc)
            for ns in ("default", "my-ns"):
                with contextlib.suppress(Exception):
                    kc.delete(kube, "Pod", "client", ns)
    text = tail(log, 10**7)
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-5000:]


def getent(pod: PodNet, database: str, key: str) -> tuple[int, str]:
    script = f'mount --bind "{pod.resolv}" /etc/resolv.conf && exec getent {database} "{key}"'
    argv = netns.exec_argv(pod.netns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout


def requests(env: Env) -> float:
    return env.metric("coredns_dns_requests_total")


def test_external_name_from_a_pod_takes_one_query_with_autopath(env, pod_nets):
    default, other = pod_nets
    for pod in (default, other):
        before, autopaths = requests(env), env.metric("coredns_autopath_success_total")
        code, out = getent(pod, "ahostsv4", "www.example.com")
        assert code == 0 and out.split()[0] == "192.0.2.53", out
        # One query reached kdns: www.example.com.<ns>.svc.cluster.local, answered with a CNAME to
        # www.example.com and its address (without autopath: four, one per search domain + one).
        assert requests(env) - before == 1
        assert env.metric("coredns_autopath_success_total") - autopaths == 1
    out = env.dig(f"www.example.com.default.svc.{Z}")  # from the DNS namespace: no pod, no autopath
    assert "status: NXDOMAIN" in out


def test_a_pod_in_another_namespace_gets_its_own_search_path(env, pod_nets, world):
    default, other = pod_nets
    code, out = getent(other, "ahostsv4", "redis-master")  # my-ns's own service, by its short name
    assert code == 0 and out.split()[0] == world["redis"]
    code, out = getent(default, "ahostsv4", "redis-master")  # not in default's namespace (seed S16)
    assert code == 2 and out == ""
    code, out = getent(other, "ahostsv4", "web.default")  # <svc>.<ns> across namespaces
    assert code == 0 and out.split()[0] == world["web"]
    assert f"web.default.svc.{Z}" in out  # the canonical name: the CNAME's target
    code, out = getent(default, "ahostsv4", "web")
    assert code == 0 and out.split()[0] == world["web"]


def test_negative_answers_cached_then_expired(env):
    name = f"gone-{time.monotonic_ns()}.example.com"
    assert "status: NXDOMAIN" in env.dig(name)
    assert "status: NXDOMAIN" in env.dig(name)
    assert env.upstream.count(name) == 1  # the second from the cache (SOA MINIMUM 10 s, RFC 2308)

    def asked_again() -> bool:
        assert "status: NXDOMAIN" in env.dig(name)
        return env.upstream.count(name) == 2

    wait_for(asked_again, 40, "the negative answer to expire")


def test_prefetch_refreshes_a_popular_name_before_it_expires(env):
    name = f"hot-{time.monotonic_ns()}.example.com"
    env.upstream.records[name] = ["192.0.2.61"]
    env.upstream.ttl = 6
    try:
        assert env.dig("+short", name).split() == ["192.0.2.61"]
        assert env.dig("+short", name).split() == ["192.0.2.61"]  # popular now: 2 queries
        assert env.upstream.count(name) == 1
        # Once less than 60 % of its TTL is left, a query is answered from the cache and the
        # name is fetched again behind it.
        wait_for(lambda: env.dig("+short", name).split() == ["192.0.2.61"] and env.upstream.count(name) >= 2,
                 40, "a prefetch")
        assert env.metric("coredns_cache_prefetch_total") >= 1
    finally:
        env.upstream.ttl = 60


def test_upstream_failure_served_stale(env):
    assert env.dig("+short", "www.stale.test").split() == ["192.0.2.99"]
    env.stale.__exit__()  # the stub domain's only upstream is gone (ICMP port unreachable)

    def stale_answer() -> bool:
        out = env.dig("www.stale.test")
        # The expired answer, with serve_stale's TTL (7), instead of SERVFAIL.
        return "status: NOERROR" in out and bool(re.search(r"www\.stale\.test\.\s+7\s+IN\s+A\s+192\.0\.2\.99", out))

    wait_for(stale_answer, 40, "a stale answer")
    assert env.metric("coredns_cache_served_stale_total") >= 1


def test_truncation_and_tcp_retry_through_kdns(env):
    out = env.dig("big.example.test")  # UDP first: 100 records do not fit in 1232 bytes
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 100" in out
    out = env.dig("big.example.test", "+ignore", "+bufsize=512")
    answers = int(re.search(r"ANSWER: (\d+)", out).group(1))
    assert " tc " in out.split("flags:")[1].split(";")[0] + " " and 0 < answers < 100
    assert ("tcp", "big.example.test", 1) in env.upstream.queries  # kdns went to TCP upstream too


def test_reload_without_dropping_queries(env):
    errors: list[str] = []
    answered = [0]
    stop_loop = threading.Event()

    def query_loop() -> None:
        with netns.enter(env.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        i = 0
        while not stop_loop.is_set():
            i = (i + 1) & 0xFFFF
            s.sendto(query(f"web.default.svc.{Z}", qid=i), (DNS_IP, 53))
            try:
                data = s.recv(4096)
                if data[:2] != i.to_bytes(2, "big") or data[3] & 0xF:
                    errors.append(f"bad answer {data[:4].hex()}")
                answered[0] += 1
            except TimeoutError:
                errors.append("timeout")
            time.sleep(0.002)
        s.close()

    t = threading.Thread(target=query_loop)
    t.start()
    try:
        env.write(ttl=9)
        wait_for(lambda: re.search(rf"web\.default\.svc\.{Z}\.\s+9\s+IN\s+A", env.dig(f"web.default.svc.{Z}")),
                 30, "the reloaded TTL")
        before = env.metric("coredns_reload_failed_total")
        with open(env.corefile, "a") as f:
            f.write("\nbroken.example:53 {\n    rewrite name a b\n}\n")
        wait_for(lambda: env.metric("coredns_reload_failed_total") > before, 30, "the refused reload")
        assert "plugin 'rewrite' is not supported" in tail(env.log, 10**6)
        assert re.search(r"\s9\s+IN\s+A", env.dig(f"web.default.svc.{Z}"))  # still the last good one
    finally:
        env.write()
        stop_loop.set()
        t.join(10)
    assert answered[0] > 50 and errors == [], errors[:5]
    wait_for(lambda: re.search(rf"web\.default\.svc\.{Z}\.\s+5\s+IN\s+A", env.dig(f"web.default.svc.{Z}")),
             30, "the TTL back")


def test_health_ready_and_the_query_log(env):
    assert env.http("health", "/health") == (200, "OK\n")
    assert env.http("ready", "/ready") == (200, "OK\n")
    assert env.http("metrics", "/health")[0] == 404  # each on its own address, as CoreDNS
    env.dig(f"logged.default.svc.{Z}", "TXT")
    wait_for(lambda: f"TXT IN logged.default.svc.{Z}. udp" in tail(env.log, 10**6), 10, "the query's log line")
    line = next(x for x in tail(env.log, 10**6).splitlines() if f"logged.default.svc.{Z}." in x)
    assert re.search(r"NXDOMAIN qr,(aa,)?rd,ra \d+ [\d.]+s", line), line  # CoreDNS's log format


def test_loadbalance_shuffles_a_headless_services_addresses(env):
    """kubeadm's Corefile has `loadbalance`: the order of a multi-address answer changes from
    query to query (CoreDNS's round_robin), a one-address answer stays as it is."""
    orders = {tuple(env.dig("+short", f"node-js-none.default.svc.{Z}").split()) for _ in range(30)}
    assert {frozenset(o) for o in orders} == {frozenset({"10.244.1.9", "10.244.2.3"})}
    assert len(orders) == 2, f"30 answers, always in the same order: {orders}"
    assert len({env.dig("+short", f"web.default.svc.{Z}") for _ in range(5)}) == 1


def test_loadbalance_shuffles_forwarded_answers(env):
    """As CoreDNS's loadbalance wraps the response writer: a forwarded multi-address answer (the
    first from the upstream, the rest from the cache) comes in a new order, the addresses intact;
    a one-address answer is relayed as it is."""
    asked = env.upstream.count("pool.example.com")
    orders = {tuple(env.dig("+short", "pool.example.com").split()) for _ in range(30)}
    assert {frozenset(o) for o in orders} == {frozenset({"192.0.2.71", "192.0.2.72", "192.0.2.73"})}
    assert len(orders) > 1, f"30 answers, always in the same order: {orders}"
    assert env.upstream.count("pool.example.com") - asked <= 2  # cached: the order changes all the same
    assert {env.dig("+short", "www.example.com").strip() for _ in range(3)} == {"192.0.2.53"}


def test_refused_corefile_names_the_plugin(workdir):
    bad = os.path.join(workdir, "Corefile.bad")
    with open(bad, "w") as f:
        f.write(". {\n    kubernetes cluster.local\n    rewrite name a b\n}\n")
    proc = subprocess.run([sys.executable, "-m", "kdns.daemon", "--conf", bad], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "line 3: plugin 'rewrite' is not supported by kdns" in proc.stderr + proc.stdout
