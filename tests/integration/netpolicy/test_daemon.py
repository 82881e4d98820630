"""End to end: objects in a (lab) API server -> `netpolicy` daemons (one per node, informers) ->
nftables in the lab nodes -> the reachability matrix follows creates, updates and deletes of
policies, pod labels and namespace labels within a second or two.

The API server and the daemons run on loopback of the test's namespace (the daemons program the
lab node given by --netns); the pods are the matrix lab's, registered with their real addresses.
"""

from __future__ import annotations

import time

import pytest

from knet.kube import client as kube
from knet.kube import parse
from knet.kube.client import new_api_client
from knet_testing.netpolicy import matrix, probe
from knet_testing.netpolicy.scenarios import A, np, nss, pods, port, rule
from knet_testing.netpolicy.testbed import Daemon, control_plane, register_pods, stop
from netpolicy import explain
from tests.promtext import value

pytestmark = pytest.mark.integration
PORTS = ((80, "TCP"), (80, "UDP"))


@pytest.fixture(scope="module")
def cluster(harness):
    with control_plane() as cp:
        api = new_api_client(cp.kubeconfig)
        register_pods(api, harness)
        daemons = {n: Daemon.start(cp.kubeconfig, n, harness.node_ns(n), cp.tmp, "--min-sync-period", "0.05",
                                   "--counter-period", "0.5") for n in harness.backends}
        try:
            for d in daemons.values():
                d.wait_healthy()
            yield api, daemons, cp.kubeconfig
        finally:
            codes = {n: stop(d.proc) for n, d in daemons.items()}
            for backend in harness.backends.values():
                backend.current = None  # the daemons owned the tables: the harness re-syncs in full
            assert codes == {n: 0 for n in daemons}, {n: d.logs()[-2000:] for n, d in daemons.items()}


def world(api):
    """The cluster's objects as the matrix sees them (what the reference evaluator judges)."""
    get = {k: [o for o in (parse(m, i) for i in kube.list_objects(api, m)["items"]) if o]
           for k, m in (("pods", "Pod"), ("namespaces", "Namespace"), ("policies", "NetworkPolicy"))}
    return get["policies"], get["pods"], get["namespaces"]


def converge(harness, api, timeout: float = 10.0) -> float:
    """Seconds until the probed matrix equals the expected one (fails after `timeout`)."""
    start = time.monotonic()
    policies, pods_, namespaces = world(api)
    want = matrix.expected(policies, pods_, namespaces, matrix.cells(ports=PORTS))
    while True:
        got = probe.probe(want, harness.pods, 0.3)
        if not matrix.mismatches(want, got):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail("\n" + matrix.render(want, got, "the daemons did not converge"))


def test_daemons_follow_the_api(harness, cluster, capsys):
    api, daemons, kubeconfig = cluster
    assert converge(harness, api) < 2  # nothing isolated yet
    kube.create(api, "NetworkPolicy", matrix.policy(np("deny", types=["Ingress"])).to_dict(), "x")
    assert converge(harness, api) < 3
    allow = np("allow-pod2", select=A, ingress=[rule([pods(pod2="yes"), nss(team="blue")],
                                                     [port(80), port(80, "UDP")])])
    kube.create(api, "NetworkPolicy", matrix.policy(allow).to_dict(), "x")
    assert converge(harness, api) < 3
    kube.patch(api, "Pod", "b", {"metadata": {"labels": {"pod2": "yes"}}}, "x")  # a peer's labels change
    assert converge(harness, api) < 3
    kube.patch(api, "Namespace", "z", {"metadata": {"labels": {"team": "blue"}}})  # a namespace's labels change
    assert converge(harness, api) < 3
    kube.patch(api, "Pod", "a", {"metadata": {"labels": {"pod": "other"}}}, "x")  # the selected pod changes
    assert converge(harness, api) < 3

    status, text = daemons[harness.nodes["x/b"]].get("/metrics")
    assert status == 200 and 'netpol_pods{state="isolated_ingress"}' in text
    assert "netpol_programming_latency_seconds_count" in text
    time.sleep(1.0)  # counters are read every 0.5 s
    drops = [value(d.get("/metrics")[1], "netpol_dropped_packets_total", policy="x/deny", direction="ingress")
             for d in daemons.values()]
    assert any(drops) and sum(v or 0 for v in drops) > 0

    # `knet netpol explain` reads the same API and names the deciding policies.
    assert explain.main(["y/a", "x/a", "80", "--kubeconfig", kubeconfig]) == 0
    out = capsys.readouterr().out
    assert "DENIED" in out and "x/deny" in out
    for name in ("deny", "allow-pod2"):
        kube.delete(api, "NetworkPolicy", name, "x")
    assert converge(harness, api) < 3
