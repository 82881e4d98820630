"""A dual-stack lab (`knet lab up --ip-family dual`, IPv4 primary): 2 nodes with the control plane,
flannel_py's VXLAN for both families (flannel-v6.1 over the IPv6 underlay fd00:33::/64) and kproxy
nftables (both families). What a user sees: Nodes with a podCIDR of each family, pods with both addresses in
status.podIPs, HTTP between pods over IPv6 on one node and across nodes with the pods' own
addresses, a dual-stack Service with two clusterIPs and an EndpointSlice per family, a
SingleStack IPv6 Service with an IPv6 clusterIP, and both clusterIPs reaching every backend; in
every proxy mode both clusterIPs and a NodePort over IPv6 from outside; kdns's AAAA per pod of a
headless Service; a NetworkPolicy admitting only one IPv6 address."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import pytest

from knet.kube import client
from knet_testing import anchors
from lab import api
from lab.bringup import controlplane, overlay
from lab.net import topology
from tests.integration.controlplane.cp_helpers import wait_for
from tests.integration.lab_names import new_lab_name

pytestmark = pytest.mark.integration
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.39"
PODS = {"a1": "node1", "a2": "node1", "b1": "node2"}
WAIT = 60.0


class DualLab:
    def __init__(self, lab: api.Lab) -> None:
        self.lab = lab
        kubeconfig = controlplane.kubeconfig_path(lab.name)
        controlplane.loopback_only(kubeconfig)  # this process is in the root namespace
        self.api = client.new_api_client(kubeconfig)

    def pod(self, name: str) -> dict:
        return client.get(self.api, "Pod", name, "default") or {}

    def ips(self, name: str) -> list[str]:
        return [p["ip"] for p in (self.pod(name).get("status") or {}).get("podIPs") or []]

    def ipv6(self, name: str) -> str:
        return next(ip for ip in self.ips(name) if ":" in ip)

    def curl(self, where: str, url: str) -> str | None:
        r = self.lab.exec(where, ["curl", "-g", "-s", "-m", "3", url])
        return r.stdout.strip() if r.returncode == 0 else None

    def slices(self, service: str) -> dict[str, list[str]]:
        items = client.list_objects(self.api, "EndpointSlice", "default",
                                    label_selector=f"kubernetes.io/service-name={service}")["items"]
        out: dict[str, list[str]] = {}
        for s in items:
            out.setdefault(s["addressType"], []).extend(a for e in s.get("endpoints") or [] for a in e["addresses"])
        return {k: sorted(v) for k, v in out.items()}


def start_dual_lab(request: pytest.FixtureRequest, proxy_mode: str, network_policy: bool = False,
                   control_plane: bool | str = True) -> DualLab:
    """A 2-node dual-stack lab with the pods of PODS running and Ready."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    lab = api.up(new_lab_name(request), nodes=2, control_plane=control_plane, ip_family="dual",
                 proxy_mode=proxy_mode, network_policy=network_policy)  # new_lab_name: it goes whatever happens
    d = DualLab(lab)
    request.addfinalizer(d.api.close)
    for name, node in PODS.items():
        client.create(d.api, "Pod", {"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "netexec", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/hostname", "port": 8080},
                                               "periodSeconds": 1}}]}}, "default")
    for name in PODS:
        wait_for(lambda n=name: any(c["type"] == "Ready" and c["status"] == "True"
                                    for c in (d.pod(n).get("status") or {}).get("conditions") or []),
                 WAIT, f"pod {name} Ready")
    return d


@pytest.fixture(scope="module")
def dual(request: pytest.FixtureRequest) -> Iterator[DualLab]:
    """nftables, with the netpolicy daemons: the mode-independent checks and the policy run here."""
    yield start_dual_lab(request, "nftables", network_policy=True)


def test_ipv6_only_is_refused_with_the_reason() -> None:
    with pytest.raises(topology.PlanError, match="flannel-py refuses an IPv6-only overlay"):
        topology.plan("ktv6only", 1, overlay="vxlan", ip_family="ipv6")


def test_nodes_get_a_pod_cidr_of_each_family_and_flannel_leases_them(dual: DualLab) -> None:
    for short in ("node1", "node2"):
        spec = (client.get(dual.api, "Node", short) or {})["spec"]
        v4, v6 = spec["podCIDRs"]
        assert spec["podCIDR"] == v4 and ipaddress.ip_network(v4).subnet_of(ipaddress.ip_network(topology.POD_CIDR))
        net6 = ipaddress.ip_network(v6)
        assert net6.prefixlen == 64 and net6.subnet_of(ipaddress.ip_network(topology.POD6_CIDR)), v6
        env = overlay.read_subnet_env(os.path.join(dual.lab.node(short)["dir"], "subnet.env"))
        assert env["FLANNEL_IPV6_SUBNET"].startswith(str(net6.network_address)), env
        assert env["FLANNEL_IPV6_NETWORK"] == topology.POD6_CIDR


def test_pods_report_both_addresses_and_have_them(dual: DualLab) -> None:
    for name, node in PODS.items():
        v4, v6 = dual.ips(name)
        assert ipaddress.ip_address(v4) in ipaddress.ip_network(topology.POD_CIDR)
        node_v6 = (client.get(dual.api, "Node", node) or {})["spec"]["podCIDRs"][1]
        assert ipaddress.ip_address(v6) in ipaddress.ip_network(node_v6), (name, v6, node_v6)
        assert dual.pod(name)["status"]["podIP"] == v4
        assert v6 in dual.lab.exec(name, ["ip", "-6", "-o", "addr", "show", "dev", "eth0"]).stdout


def test_pod_to_pod_over_ipv6_on_one_node_and_across_nodes(dual: DualLab) -> None:
    a1 = dual.ipv6("a1")
    for target in ("a2", "b1"):  # a2: the node's bridge; b1: flannel-v6.1 (VXLAN over fd00:33::/64)
        url = f"http://[{dual.ipv6(target)}]:8080"
        assert wait_for(lambda u=url: dual.curl("a1", f"{u}/hostname"), WAIT, f"a1 -> {target} over IPv6") == target
        # the pod's own address arrives: no NAT between pods in either family
        assert dual.curl("a1", f"{url}/clientip").rsplit(":", 1)[0] == f"[{a1}]"
    # the reverse direction, and IPv4 still works beside it
    assert dual.curl("b1", f"http://[{a1}]:8080/hostname") == "a1"
    assert dual.curl("b1", f"http://{dual.ips('a1')[0]}:8080/hostname") == "a1"


def test_dual_stack_service_has_two_cluster_ips_and_a_slice_per_family(dual: DualLab) -> None:
    svc = client.create(dual.api, "Service", {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ipFamilyPolicy": "PreferDualStack",
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}, "default")
    v4, v6 = svc["spec"]["clusterIPs"]
    assert svc["spec"]["ipFamilies"] == ["IPv4", "IPv6"] and svc["spec"]["clusterIP"] == v4
    assert ipaddress.ip_address(v4) in ipaddress.ip_network(topology.SERVICE_CIDR)
    assert ipaddress.ip_address(v6) in ipaddress.ip_network(topology.SERVICE6_CIDR)
    want = {"IPv4": sorted(dual.ips(p)[0] for p in PODS), "IPv6": sorted(dual.ipv6(p) for p in PODS)}
    wait_for(lambda: dual.slices("web") == want, WAIT, "web's IPv4 and IPv6 slices")
    # the IPv4 half works through the proxy
    got = wait_for(lambda: {dual.curl("a1", f"http://{v4}/hostname") for _ in range(12)} >= set(PODS) or None,
                   WAIT, "every backend through the IPv4 clusterIP")
    assert got


def test_single_stack_ipv6_service_gets_an_ipv6_cluster_ip(dual: DualLab) -> None:
    svc = client.create(dual.api, "Service", {"metadata": {"name": "web6"}, "spec": {
        "selector": {"app": "web"}, "ipFamilies": ["IPv6"],
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}, "default")
    (ip,) = svc["spec"]["clusterIPs"]
    assert svc["spec"]["ipFamilyPolicy"] == "SingleStack" and svc["spec"]["ipFamilies"] == ["IPv6"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(topology.SERVICE6_CIDR)
    wait_for(lambda: dual.slices("web6") == {"IPv6": sorted(dual.ipv6(p) for p in PODS)}, WAIT, "web6's IPv6 slice")


def test_cluster_ip_over_ipv6_reaches_every_backend(dual: DualLab) -> None:
    svc = client.get(dual.api, "Service", "web", "default") or client.create(dual.api, "Service", {
        "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ipFamilyPolicy": "PreferDualStack",
                                              "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
        "default")
    v6 = svc["spec"]["clusterIPs"][1]
    seen = set()
    for i in range(30):
        seen.add(dual.curl("a1", f"http://[{v6}]/hostname"))
        if seen >= set(PODS) or (i >= 2 and seen == {None}):  # nothing answers: no point waiting
            break
    assert seen >= set(PODS), seen


# --- every proxy mode: the Service paths a user takes over IPv6 --------------------------------

def web_service(d: DualLab, name: str, **spec: object) -> dict:
    return client.get(d.api, "Service", name, "default") or client.create(d.api, "Service", {
        "metadata": {"name": name}, "spec": {"selector": {"app": "web"}, "ipFamilyPolicy": "PreferDualStack",
                                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                                             **spec}}, "default")


def backends_seen(d: DualLab, where: str, url: str) -> set[str | None]:
    """Who answers `url` from `where` over up to 30 requests (stops once every pod answered)."""
    seen: set[str | None] = set()
    for i in range(30):
        seen.add(d.curl(where, url))
        if seen >= set(PODS) or (i >= 2 and seen == {None}):  # nothing answers: no point waiting
            break
    return seen


@pytest.fixture(scope="module", params=["nftables", "iptables", "ebpf", "userspace", "iptables+real"])
def dual_mode(request: pytest.FixtureRequest) -> Iterator[DualLab]:
    """nftables reuses the module's lab; the other modes get a dual lab of their own; "+real":
    kube-apiserver and kube-controller-manager configured dual-stack (`--control-plane real`)."""
    if request.param == "nftables":
        yield request.getfixturevalue("dual")
        return
    mode, _, variant = request.param.partition("+")
    if variant == "real" and (why := anchors.real_control_plane_missing()):
        pytest.skip(f"--control-plane real: {why}")
    yield start_dual_lab(request, mode, control_plane=variant or True)


def test_every_mode_serves_both_cluster_ips_and_a_node_port_over_ipv6(dual_mode: DualLab) -> None:
    d = dual_mode
    svc = web_service(d, "both", type="NodePort")
    v4, v6 = svc["spec"]["clusterIPs"]
    node_port = svc["spec"]["ports"][0]["nodePort"]
    want = {"IPv4": sorted(d.ips(p)[0] for p in PODS), "IPv6": sorted(d.ipv6(p) for p in PODS)}
    wait_for(lambda: d.slices("both") == want, WAIT, "both slices")
    # A pod reaches every backend through either clusterIP (kproxy programs both families).
    for url in (f"http://{v4}/hostname", f"http://[{v6}]/hostname"):
        wait_for(lambda u=url: d.curl("a1", u), WAIT, f"{url} answering")
        assert backends_seen(d, "a1", url) >= set(PODS), url
    # From outside the cluster (the client namespace) to each node's IPv6 underlay address.
    for short in ("node1", "node2"):
        url = f"http://[{d.lab.node(short)['ip6']}]:{node_port}/hostname"
        assert wait_for(lambda u=url: d.curl("client", u), WAIT, f"NodePort over IPv6 on {short}") in PODS


def test_headless_service_answers_aaaa_per_ready_pod(dual: DualLab) -> None:
    """kdns in the lab: a dual-stack headless Service's name has an AAAA per ready pod, asked from
    a pod through the cluster DNS (the pod's resolv.conf)."""
    client.create(dual.api, "Service", {"metadata": {"name": "web-hl"}, "spec": {
        "clusterIP": "None", "selector": {"app": "web"}, "ipFamilyPolicy": "PreferDualStack",
        "ports": [{"name": "http", "port": 8080}]}}, "default")
    want6, want4 = {dual.ipv6(p) for p in PODS}, {dual.ips(p)[0] for p in PODS}

    def answers(rtype: str) -> set[str]:
        r = dual.lab.exec("a1", ["dig", "+short", "+time=2", "+tries=1", rtype, "web-hl.default.svc.cluster.local"])
        return {line for line in r.stdout.split() if line} if r.returncode == 0 else set()
    assert wait_for(lambda: answers("AAAA") == want6 or None, WAIT, "an AAAA per pod")
    assert answers("A") == want4


def test_policy_allowing_only_an_ipv6_block(dual: DualLab) -> None:
    """netpolicy in the lab: a pod whose policy admits only a1's IPv6 address is reached by a1 over
    IPv6, and by nothing else: not b1 over IPv6, not a1 over IPv4."""
    client.create(dual.api, "Pod", {"metadata": {"name": "guarded", "labels": {"app": "guarded"}}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": "node1"},
        "containers": [{"name": "netexec", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
                        "readinessProbe": {"httpGet": {"path": "/hostname", "port": 8080}, "periodSeconds": 1}}]}},
                  "default")
    wait_for(lambda: len(dual.ips("guarded")) == 2 and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (dual.pod("guarded").get("status") or {}).get("conditions") or []), WAIT, "guarded Ready")
    v4, v6 = dual.ips("guarded")
    url6, url4 = f"http://[{v6}]:8080/hostname", f"http://{v4}:8080/hostname"
    assert wait_for(lambda: dual.curl("b1", url6), WAIT, "b1 -> guarded before the policy") == "guarded"
    client.create(dual.api, "NetworkPolicy", {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "only-a1-v6"},
        "spec": {"podSelector": {"matchLabels": {"app": "guarded"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": f"{dual.ipv6('a1')}/128"}}]}]}}, "default")
    wait_for(lambda: dual.curl("b1", url6) is None or None, WAIT, "b1 refused over IPv6 once the policy is in")
    assert dual.curl("a1", url6) == "guarded"
    assert dual.curl("a1", url4) is None  # a1's IPv4 address is not in the block
    assert dual.curl("b1", url4) is None
