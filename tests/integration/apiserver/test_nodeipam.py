"""Node IPAM through a real API server: the lab's node IPAM controller (knet-controllers
--allocate-node-cidrs) against knet-apiserver, and, as the reference, kube-controller-manager's
range allocator against kube-apiserver (conftest's "real" server runs it with the same flags).
What a user sees: the Nodes' spec.podCIDR, the events, the controller's log and metrics."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from ipaddress import ip_network

import pytest
from kubernetes import client

from knet_testing.apiserver_env import free_port, start, start_apiserver, stop, tail, wait_for
from lab.apiserver import auth
from tests.integration import anchors
from tests.integration.apiserver.conftest import ADMIN_TOKEN, Server

pytestmark = pytest.mark.integration
WAIT = 60.0


def controllers_argv(kubeconfig: str, cluster_cidr: str, *extra: str) -> list[str]:
    import sys
    return [sys.executable, "-m", "lab.controllers.main", "--kubeconfig", kubeconfig, "--controllers", "nodeipam",
            "--allocate-node-cidrs", "--cluster-cidr", cluster_cidr, "--node-cidr-mask-size", "24", *extra]


@pytest.fixture(scope="module")
def node_ipam(server: Server) -> Iterator[None]:
    """The node IPAM controller of the server's flavour (the real one runs since the server started)."""
    if server.flavour == "real":
        yield
        return
    log = os.path.join(server.tmp, "nodeipam.log")
    proc = start(controllers_argv(server.kubeconfig, anchors.CLUSTER_CIDR, "--service-cluster-ip-range",
                                  anchors.SERVICE_CIDR), log)
    try:
        yield
    finally:
        assert stop(proc) == 0, tail(log)


def pod_cidr(core: client.CoreV1Api, name: str) -> str | None:
    return core.read_node(name).spec.pod_cidr


def wait_cidr(core: client.CoreV1Api, name: str) -> str:
    wait_for(lambda: pod_cidr(core, name), WAIT, f"podCIDR of node {name}")
    cidr = pod_cidr(core, name)
    assert cidr is not None and core.read_node(name).spec.pod_cid_rs == [cidr]
    return cidr


def new_node(core: client.CoreV1Api, name: str, cidr: str | None = None) -> None:
    spec = client.V1NodeSpec(pod_cidr=cidr, pod_cid_rs=[cidr]) if cidr else None
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name), spec=spec))


@contextlib.contextmanager
def nodes_deleted(core: client.CoreV1Api, names: list[str]) -> Iterator[list[str]]:
    try:
        yield names
    finally:
        for name in names:
            with contextlib.suppress(client.ApiException):
                core.delete_node(name)


def test_each_node_gets_its_own_block_and_a_released_one_is_not_reused_at_once(api, server: Server,
                                                                                 node_ipam: None) -> None:
    core = client.CoreV1Api(api)
    tag = uuid.uuid4().hex[:6]
    with nodes_deleted(core, [f"ipam-{tag}-{x}" for x in "abcd"]) as (a, b, c, d):
        new_node(core, c, "10.244.250.0/24")  # set by an administrator: kept, and never handed out
        new_node(core, a)
        new_node(core, b)
        got = {n: wait_cidr(core, n) for n in (a, b)}
        for cidr in got.values():
            net = ip_network(cidr)
            assert net.prefixlen == 24 and net.subnet_of(ip_network(anchors.CLUSTER_CIDR)), cidr
        assert len({*got.values(), "10.244.250.0/24"}) == 3
        assert pod_cidr(core, c) == "10.244.250.0/24"
        core.delete_node(a)
        new_node(core, d)
        assert wait_cidr(core, d) not in {*got.values(), "10.244.250.0/24"}


# --- a range of two blocks (the lab's controller only: the real one runs with the conftest's range) ---

class SmallRange:
    def __init__(self, tmp: str, etcd_url: str) -> None:
        self.api_server = start_apiserver(os.path.join(tmp, "small"), etcd_url, "/registry-" + uuid.uuid4().hex[:8],
                                          f"{ADMIN_TOKEN},admin,admin\n", tls=False)
        self.kubeconfig = auth.write_kubeconfig(os.path.join(tmp, "small", "admin.kubeconfig"),
                                                self.api_server.urls[0], "admin", ADMIN_TOKEN)
        self.log = os.path.join(tmp, "small", "controllers.log")
        self.metrics = f"127.0.0.1:{free_port()}"
        self.proc = None
        self.api = client.ApiClient(client.Configuration())
        self.api.configuration.host = self.api_server.urls[0]
        self.api.configuration.api_key = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        self.core = client.CoreV1Api(self.api)

    def start_controllers(self) -> None:
        self.proc = start(controllers_argv(self.kubeconfig, "10.250.0.0/23", "--metrics", self.metrics), self.log)
        wait_for(lambda: "node IPAM: cluster CIDR" in tail(self.log, 100_000), WAIT, "knet-controllers", self.proc,
                 self.log)

    def stop_controllers(self) -> None:
        assert stop(self.proc) == 0, tail(self.log)

    def events(self, node: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event("default").items if e.involved_object.name == node]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as r:  # loopback only
            return r.read().decode()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            stop(self.proc)
        self.api.close()
        stop(self.api_server.proc)


def said(log: str, line: str) -> Callable[[], bool]:
    return lambda: line in tail(log, 200_000)


def test_a_full_range_leaves_the_node_without_podcidr_says_so_and_a_restart_adopts(server: Server,
                                                                                    lab_only: None) -> None:
    assert server.etcd is not None
    r = SmallRange(server.tmp, server.etcd.url)
    try:
        r.start_controllers()
        core = r.core
        for name in ("n1", "n2"):
            new_node(core, name)
        first = {n: wait_cidr(core, n) for n in ("n1", "n2")}
        assert sorted(first.values()) == ["10.250.0.0/24", "10.250.1.0/24"]

        new_node(core, "n3")
        wait_for(lambda: r.events("n3"), WAIT, "an event on n3")
        (event,) = r.events("n3")
        assert (event.reason, event.type, event.message, event.source.component) == (
            "CIDRNotAvailable", "Normal", "Node n3 status is now: CIDRNotAvailable", "cidrAllocator")
        assert pod_cidr(core, "n3") is None
        assert said(r.log, "node n3: no podCIDR assigned: no CIDRs remaining in cluster CIDR 10.250.0.0/23")()
        metrics = r.scrape()
        assert 'node_ipam_controller_cidrset_usage_cidrs{clusterCIDR="10.250.0.0/23"} 1.0' in metrics
        assert 'node_ipam_controller_cidrset_cidrs_allocations_total{clusterCIDR="10.250.0.0/23"} 2.0' in metrics

        core.delete_node("n1")  # a block is free: the waiting node gets it
        assert wait_cidr(core, "n3") == first["n1"]
        time.sleep(1)  # its heartbeat-free Node gets no second event
        assert len(r.events("n3")) == 1

        r.stop_controllers()
        r.start_controllers()  # adopts n2's and n3's blocks before anything else
        wait_for(said(r.log, f"node n3: podCIDR {first['n1']} adopted"), WAIT, "adoption", r.proc, r.log)
        new_node(core, "n4")
        wait_for(lambda: r.events("n4"), WAIT, "an event on n4")
        assert pod_cidr(core, "n4") is None
        assert (pod_cidr(core, "n2"), pod_cidr(core, "n3")) == (first["n2"], first["n1"])
    finally:
        r.close()
