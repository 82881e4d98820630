"""Node IPAM through a real API server: the lab's node IPAM controller (knet-controllers
--allocate-node-cidrs) against knet-apiserver, and, as the reference, kube-controller-manager's
range allocator against kube-apiserver (conftest's "real" server runs it with the same flags).
What a user sees: the Nodes' spec.podCIDR, the events, the controller's log and metrics."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from ipaddress import ip_network

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from knet.kube import client as kc
from knet_testing import anchors
from knet_testing.apiserver_env import free_port, start, start_apiserver, stop, tail, wait_for
from lab.apiserver import auth
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
        wait_for(said(log, "node IPAM: cluster CIDR"), WAIT, "knet-controllers", proc, log)
        yield
    finally:
        assert stop(proc) == 0, tail(log)


def pod_cidr(api: ApiClient, name: str) -> str | None:
    return ((kc.get(api, "Node", name) or {}).get("spec") or {}).get("podCIDR")


def wait_cidr(api: ApiClient, name: str) -> str:
    wait_for(lambda: pod_cidr(api, name), WAIT, f"podCIDR of node {name}")
    node = kc.get(api, "Node", name) or {}
    cidr = node["spec"]["podCIDR"]
    assert node["spec"]["podCIDRs"] == [cidr]
    return cidr


def new_node(api: ApiClient, name: str, cidr: str | None = None) -> None:
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    kc.create(api, "Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec})


@contextlib.contextmanager
def nodes_deleted(api: ApiClient, names: list[str]) -> Iterator[list[str]]:
    try:
        yield names
    finally:
        for name in names:
            kc.delete(api, "Node", name)


def test_each_node_gets_its_own_block_and_a_released_one_is_not_reused_at_once(api, server: Server,
                                                                                 node_ipam: None) -> None:
    tag = uuid.uuid4().hex[:6]
    with nodes_deleted(api, [f"ipam-{tag}-{x}" for x in "abcd"]) as (a, b, c, d):
        new_node(api, c, "10.244.250.0/24")  # set by an administrator: kept, and never handed out
        new_node(api, a)
        new_node(api, b)
        got = {n: wait_cidr(api, n) for n in (a, b)}
        for cidr in got.values():
            net = ip_network(cidr)
            assert net.prefixlen == 24 and net.subnet_of(ip_network(anchors.CLUSTER_CIDR)), cidr
        assert len({*got.values(), "10.244.250.0/24"}) == 3
        assert pod_cidr(api, c) == "10.244.250.0/24"
        kc.delete(api, "Node", a)
        new_node(api, d)
        assert wait_cidr(api, d) not in {*got.values(), "10.244.250.0/24"}


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

    def start_controllers(self) -> None:
        self.proc = start(controllers_argv(self.kubeconfig, "10.250.0.0/23", "--metrics", self.metrics), self.log)
        wait_for(lambda: "node IPAM: cluster CIDR" in tail(self.log, 100_000), WAIT, "knet-controllers", self.proc,
                 self.log)

    def stop_controllers(self) -> None:
        assert stop(self.proc) == 0, tail(self.log)

    def events(self, node: str) -> list[dict]:
        r = client.CoreV1Api(self.api).list_namespaced_event("default", _preload_content=False)
        return [e for e in json.loads(r.data)["items"] if e["involvedObject"]["name"] == node]

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
        api = r.api
        for name in ("n1", "n2"):
            new_node(api, name)
        first = {n: wait_cidr(api, n) for n in ("n1", "n2")}
        assert sorted(first.values()) == ["10.250.0.0/24", "10.250.1.0/24"]

        new_node(api, "n3")
        wait_for(lambda: r.events("n3"), WAIT, "an event on n3")
        (event,) = r.events("n3")
        assert (event["reason"], event["type"], event["message"], event["source"]["component"]) == (
            "CIDRNotAvailable", "Normal", "Node n3 status is now: CIDRNotAvailable", "cidrAllocator")
        assert pod_cidr(api, "n3") is None
        assert said(r.log, "node n3: no podCIDR assigned: no CIDRs remaining in cluster CIDR 10.250.0.0/23")()
        metrics = r.scrape()
        assert 'node_ipam_controller_cidrset_usage_cidrs{clusterCIDR="10.250.0.0/23"} 1.0' in metrics
        assert 'node_ipam_controller_cidrset_cidrs_allocations_total{clusterCIDR="10.250.0.0/23"} 2.0' in metrics

        kc.delete(api, "Node", "n1")  # a block is free: the waiting node gets it
        assert wait_cidr(api, "n3") == first["n1"]
        time.sleep(1)  # its heartbeat-free Node gets no second event
        assert len(r.events("n3")) == 1

        r.stop_controllers()
        r.start_controllers()  # adopts n2's and n3's blocks before anything else
        wait_for(said(r.log, f"node n3: podCIDR {first['n1']} adopted"), WAIT, "adoption", r.proc, r.log)
        new_node(api, "n4")
        wait_for(lambda: r.events("n4"), WAIT, "an event on n4")
        assert pod_cidr(api, "n4") is None
        assert (pod_cidr(api, "n2"), pod_cidr(api, "n3")) == (first["n2"], first["n1"])
    finally:
        r.close()


def test_a_nodes_pod_ranges_are_fixed_once_set(api) -> None:
    """kube-apiserver lets a node's podCIDR go from "" to a range once (the node IPAM controller's
    write) and refuses any change after: pods and routes were made from it."""
    name = f"fixed-{uuid.uuid4().hex[:6]}"
    with nodes_deleted(api, [name]):
        new_node(api, name, "10.244.251.0/24")
        for spec in ({"podCIDR": "10.244.252.0/24", "podCIDRs": ["10.244.252.0/24"]},
                     {"podCIDRs": ["10.244.251.0/24", "10.244.253.0/24"]}):
            with pytest.raises(ApiException) as refused:
                kc.patch(api, "Node", name, {"spec": spec})
            assert refused.value.status == 422, refused.value.body
            assert 'node updates may not change podCIDR except from \\"\\" to valid' in refused.value.body
        assert pod_cidr(api, name) == "10.244.251.0/24"
