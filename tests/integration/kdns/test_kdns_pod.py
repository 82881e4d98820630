"""Name resolution as a pod does it: glibc's stub resolver (`getent`) with a pod's resolver
configuration (nameserver = the DNS service's ClusterIP, search <ns>.svc.cluster.local
svc.cluster.local cluster.local, ndots:5), against kdns inside a network namespace of our own.

kdns listens on 10.96.0.10:53 on that namespace's loopback (the address a ClusterIP would have);
the API server listens in the namespace too; the upstream is a FakeUpstream made inside it. The
pod's resolv.conf is bind-mounted over /etc/resolv.conf in a private mount namespace, so the
host's file is never touched. (In the full lab the resolver path is the same, with kproxy
translating the ClusterIP to the kdns pod.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from knet import netns
from knet_testing.apiserver_env import start, stop, tail, wait_for
from knet_testing.kdns import FakeUpstream
from tests.integration.kdns.conftest import ApiServer

pytestmark = pytest.mark.integration
DNS_IP = "10.96.0.10"


@pytest.fixture(scope="module")
def pod_dns(dns_netns: str, apiserver: ApiServer, world: dict, workdir: str) -> Iterator[str]:
    """kdns in dns_netns on 10.96.0.10:53; yields the pod's resolv.conf path."""
    subprocess.run(["ip", "-n", dns_netns, "addr", "add", f"{DNS_IP}/32", "dev", "lo"], check=True)
    with netns.enter(dns_netns):
        upstream = FakeUpstream("127.0.0.2", {"www.example.com": ["192.0.2.53"]})
    resolv = os.path.join(workdir, "pod-resolv.conf")
    with open(resolv, "w") as f:
        f.write(f"nameserver {DNS_IP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"
                "options ndots:5 timeout:2 attempts:2\n")
    log = os.path.join(workdir, "kdns-pod.log")
    with upstream:
        proc = start(netns.exec_argv(dns_netns, [
            sys.executable, "-m", "kdns.daemon", "--kubeconfig", apiserver.netns_kubeconfig,
            "--listen", f"{DNS_IP}:53", "--upstream", upstream.address, "--metrics-bind-address", "127.0.0.1:9153"]),
            log)
        try:
            wait_for(lambda: "serving zone" in tail(log), 40, "kdns in the namespace", proc, log)
            # Wait until the informers have delivered the world (the last object created).
            wait_for(lambda: bool(getent(dns_netns, resolv, "ahostsv4", "many.default.svc.cluster.local")[1]),
                     10, "records in kdns", proc, log)
            yield resolv
        finally:
            stop(proc)


def getent(ns: str, resolv: str, database: str, key: str) -> tuple[int, str]:
    script = f'mount --bind "{resolv}" /etc/resolv.conf && exec getent {database} "{key}"'
    argv = netns.exec_argv(ns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout


def addresses(out: str) -> list[str]:
    return sorted({line.split()[0] for line in out.splitlines() if line.strip()})


@pytest.mark.parametrize("name, want", [
    ("web", "web"),  # a bare service name from the same namespace: the first search domain
    ("redis-master.my-ns", "redis"),  # <svc>.<ns> from another namespace
    ("redis-master.my-ns.svc.cluster.local", "redis"),  # the full name
    ("whaleset-1.sayhey-svc", "10.244.2.6"),  # StatefulSet-style
])
def test_search_path(pod_dns, dns_netns, world, name, want):
    code, out = getent(dns_netns, pod_dns, "hosts", name)
    assert code == 0, out
    assert out.split()[0] == world.get(want, want)
    assert name in out


def test_headless_returns_every_ready_pod(pod_dns, dns_netns):
    code, out = getent(dns_netns, pod_dns, "ahostsv4", "node-js-none")
    assert code == 0 and addresses(out) == ["10.244.1.9", "10.244.2.3"]


def test_outside_names_go_through_the_search_path_then_upstream(pod_dns, dns_netns):
    code, out = getent(dns_netns, pod_dns, "hosts", "www.example.com")
    assert code == 0 and out.split()[0] == "192.0.2.53"
    code, out = getent(dns_netns, pod_dns, "hosts", "ext")  # ExternalName -> CNAME -> upstream address
    assert code == 0 and out.split()[0] == "192.0.2.53"


def test_unknown_name_fails_cleanly(pod_dns, dns_netns):
    code, out = getent(dns_netns, pod_dns, "hosts", "no-such-service")
    assert code == 2 and out == ""
    # Seed S16: a bare name is looked up in the pod's own namespace only (redis-master lives in
    # my-ns; this pod is in default), so it fails where the long form works.
    code, out = getent(dns_netns, pod_dns, "hosts", "redis-master")
    assert code == 2 and out == ""
