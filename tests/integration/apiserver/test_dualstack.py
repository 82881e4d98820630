"""Dual-stack Services, EndpointSlices and node IPAM through a real API server: knet-apiserver with
the lab's controllers ("lab") and kube-apiserver with kube-controller-manager ("real"), both
started with two service ranges (IPv4 primary) and two cluster CIDRs, as a dual-stack cluster is.
Every case runs against both; where they differ, that is a finding. What a user sees: the
Service's clusterIPs / ipFamilies / ipFamilyPolicy, the 422 causes, the EndpointSlices, the
Nodes' podCIDRs."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from knet_testing import anchors
from knet_testing.apiserver_env import ApiServerProcess, start, tail, wait_for
from lab.apiserver import pki
from tests.integration.apiserver.conftest import KCM_TOKEN, Server, running_server

pytestmark = pytest.mark.integration
SERVICE_V4, SERVICE_V6 = "10.96.0.0/12", "fd00:10:96::/112"
PODS_V4, PODS_V6 = "10.244.0.0/16", "fd00:10:244::/56"
SERVICES, PODS = f"{SERVICE_V4},{SERVICE_V6}", f"{PODS_V4},{PODS_V6}"
WAIT = 60.0


@pytest.fixture(scope="module", params=["lab", "real"])
def dual(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A dual-stack API server with its own etcd and the controllers of its flavour."""
    with running_server(request.param, ["--service-cluster-ip-range", SERVICES]) as srv:
        flags = ["--service-cluster-ip-range", SERVICES, "--cluster-cidr", PODS,
                 "--node-cidr-mask-size-ipv4", "24", "--node-cidr-mask-size-ipv6", "64"]
        if srv.flavour == "real":
            certs = pki.ensure(os.path.join(srv.tmp, "pki"), [anchors.HOST])
            proc = ApiServerProcess(srv.proc, [srv.url], certs, srv.argv, srv.log)
            srv.controllers = anchors.start_kube_controller_manager(srv.tmp, proc, KCM_TOKEN, *flags).proc
        else:
            log = os.path.join(srv.tmp, "controllers.log")
            srv.controllers = start([sys.executable, "-m", "lab.controllers.main", "--kubeconfig", srv.kubeconfig,
                                     "--controllers", "endpointslice,nodeipam", "--allocate-node-cidrs", *flags], log)
            wait_for(lambda: tail(log, 100_000).count("node IPAM: cluster CIDR") == 2, WAIT, "knet-controllers",
                     srv.controllers, log)
        yield srv


@pytest.fixture(scope="module")
def core(dual: Server) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=dual.kubeconfig)
    yield client.CoreV1Api(api)
    api.close()


@pytest.fixture
def dual_ns(core: client.CoreV1Api, dual: Server) -> Iterator[str]:
    name = "t-" + uuid.uuid4().hex[:8]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    if dual.flavour == "real":  # pods need the namespace's default ServiceAccount there
        wait_for(lambda: any(a.metadata.name == "default" for a in core.list_namespaced_service_account(name).items),
                 WAIT, f"default ServiceAccount in {name}")
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


def svc(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def in_range(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def families(s) -> tuple[list[str], list[str], str]:
    return s.spec.cluster_ips, s.spec.ip_families, s.spec.ip_family_policy


def causes(core: client.CoreV1Api, ns: str, body: dict, name: str | None = None) -> list[tuple[str, str]]:
    """The (field, message) causes of a 422 for a create (or, with `name`, a patch)."""
    with pytest.raises(ApiException) as e:
        if name:
            core.patch_namespaced_service(name, ns, body)
        else:
            core.create_namespaced_service(ns, body)
    status = json.loads(e.value.body)
    assert e.value.status == 422 and status["reason"] == "Invalid", status
    return [(c.get("field", ""), c["message"]) for c in status["details"]["causes"]]


def test_default_is_single_stack_of_the_primary_family(core, dual_ns, dual) -> None:
    ns = dual_ns
    s = core.create_namespaced_service(ns, svc("plain"))
    ips, fams, policy = families(s)
    assert policy == "SingleStack" and fams == ["IPv4"] and len(ips) == 1 and in_range(ips[0], SERVICE_V4)
    assert s.spec.cluster_ip == ips[0]
    v6 = core.create_namespaced_service(ns, svc("six", ipFamilies=["IPv6"]))
    ips, fams, policy = families(v6)
    assert policy == "SingleStack" and fams == ["IPv6"] and in_range(ips[0], SERVICE_V6)
    assert v6.spec.cluster_ip == ips[0]
    # an explicit IPv6 clusterIP says the family on its own
    fixed = core.create_namespaced_service(ns, svc("fixed6", clusterIP="fd00:10:96::abc"))
    assert families(fixed) == (["fd00:10:96::abc"], ["IPv6"], "SingleStack")


def test_prefer_and_require_dual_stack_get_both_families(core, dual_ns, dual) -> None:
    ns = dual_ns
    for policy in ("PreferDualStack", "RequireDualStack"):
        s = core.create_namespaced_service(ns, svc(policy.lower(), ipFamilyPolicy=policy))
        ips, fams, got = families(s)
        assert got == policy and fams == ["IPv4", "IPv6"], (policy, fams)
        assert in_range(ips[0], SERVICE_V4) and in_range(ips[1], SERVICE_V6) and s.spec.cluster_ip == ips[0]
    # IPv6 first when asked, and explicit addresses of both families are kept
    s = core.create_namespaced_service(ns, svc("v6first", ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6"]))
    ips, fams, _ = families(s)
    assert fams == ["IPv6", "IPv4"] and in_range(ips[0], SERVICE_V6) and in_range(ips[1], SERVICE_V4)
    s = core.create_namespaced_service(ns, svc("both", ipFamilyPolicy="RequireDualStack", clusterIP="10.100.7.7",
                                               clusterIPs=["10.100.7.7", "fd00:10:96::77"]))
    assert families(s) == (["10.100.7.7", "fd00:10:96::77"], ["IPv4", "IPv6"], "RequireDualStack")
    assert s.spec.cluster_ip == "10.100.7.7"
    # a taken address of the second family fails the whole create
    got = causes(core, ns, svc("taken", ipFamilyPolicy="RequireDualStack", clusterIP="10.100.7.8",
                               clusterIPs=["10.100.7.8", "fd00:10:96::77"]))
    assert [f for f, _ in got] == ["spec.clusterIPs"] and "already allocated" in got[0][1], got
    # nothing is kept: the lab's server reserves nothing for a failed create; kube-apiserver
    # (1.37, IPAddress objects) may hold the first address a moment before it releases it
    wait_for(lambda: _created(core, ns, svc("free-again", clusterIP="10.100.7.8")), WAIT, "10.100.7.8 free again")


def _created(core: client.CoreV1Api, ns: str, body: dict) -> bool:
    try:
        core.create_namespaced_service(ns, body)
        return True
    except ApiException as e:
        if e.status != 422:
            raise
        return False


def test_invalid_family_fields_are_refused_as_kube_apiserver_words_them(core, dual_ns, dual) -> None:
    ns = dual_ns
    cases = [
        (svc("a", ipFamilyPolicy="SingleStack", ipFamilies=["IPv4", "IPv6"]), "spec.ipFamilyPolicy",
         "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"),
        (svc("b", ipFamilyPolicy="SingleStack", clusterIP="10.100.8.1", clusterIPs=["10.100.8.1", "fd00:10:96::81"]),
         "spec.ipFamilyPolicy",
         "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"),
        (svc("c", ipFamilyPolicy="RequireDualStack", clusterIP="10.100.8.1", clusterIPs=["10.100.8.1", "10.100.8.2"]),
         "spec.clusterIPs",
         "may specify no more than one IP for each IP family"),
        (svc("d", ipFamilies=["IPv4"], clusterIP="fd00:10:96::83"), "spec.clusterIPs[0]",
         "expected an IPv4 value as indicated by `ipFamilies[0]`"),
        (svc("e", ipFamilies=["IPv5"]), "spec.ipFamilies[0]", 'Unsupported value: "IPv5"'),
        (svc("f", ipFamilyPolicy="Sometimes"), "spec.ipFamilyPolicy", 'Unsupported value: "Sometimes"'),
        (svc("g", ipFamilies=["IPv4", "IPv4"], ipFamilyPolicy="PreferDualStack"), "spec.ipFamilies[1]",
         'Duplicate value: "IPv4"'),
        (svc("h", clusterIP="10.100.8.4", clusterIPs=["10.100.8.5"]), "spec.clusterIPs",
         "first value must match `clusterIP`"),
        (svc("h2", clusterIPs=["10.100.8.5"]), "spec.clusterIPs", "must be empty when `clusterIP` is not specified"),
        (svc("i", type="ExternalName", externalName="db.example.com", ipFamilyPolicy="SingleStack"),
         "spec.ipFamilyPolicy", "may not be set for ExternalName services"),
    ]
    for body, field, words in cases:
        got = causes(core, ns, body)
        assert any(f == field and words in m for f, m in got), (body["metadata"]["name"], got)
    assert core.list_namespaced_service(ns).items == []


def test_upgrade_downgrade_and_the_primary_family_is_immutable(core, dual_ns, dual) -> None:
    ns = dual_ns
    s = core.create_namespaced_service(ns, svc("web", selector={"app": "web"}))
    first = s.spec.cluster_ip
    up = core.patch_namespaced_service("web", ns, {"spec": {"ipFamilyPolicy": "PreferDualStack"}})
    ips, fams, policy = families(up)
    assert policy == "PreferDualStack" and fams == ["IPv4", "IPv6"] and ips[0] == first and in_range(ips[1], SERVICE_V6)
    second = ips[1]
    # an old client's PUT (clusterIP alone) keeps both addresses
    cur = core.read_namespaced_service("web", ns)
    cur.spec.cluster_ips = None
    assert core.replace_namespaced_service("web", ns, cur).spec.cluster_ips == ips
    # the primary family stays the primary (the addresses it holds no longer match the families)
    got = causes(core, ns, {"spec": {"ipFamilies": ["IPv6", "IPv4"]}}, "web")
    assert ("spec.clusterIPs[0]", f'Invalid value: "{first}": expected an IPv6 value as indicated by `ipFamilies[0]`') \
        in got, got
    # dropping the second address needs SingleStack
    got = causes(core, ns, {"spec": {"clusterIPs": [first]}}, "web")
    assert any(f == "spec.ipFamilyPolicy" for f, _ in got), got
    down = core.patch_namespaced_service("web", ns, {"spec": {"ipFamilyPolicy": "SingleStack"}})
    assert families(down) == ([first], ["IPv4"], "SingleStack")
    # the released IPv6 address is free for someone else
    other = core.create_namespaced_service(ns, svc("other", clusterIP=second))
    assert other.spec.cluster_ip == second
    # ExternalName drops the addresses and families; back to ClusterIP allocates again
    ext = core.patch_namespaced_service("other", ns, {"spec": {"type": "ExternalName", "externalName": "x.example",
                                                               "clusterIP": None, "clusterIPs": None,
                                                               "ipFamilies": None, "ipFamilyPolicy": None}})
    assert not ext.spec.cluster_ip and not ext.spec.ip_families and ext.spec.ip_family_policy is None
    core.create_namespaced_service(ns, svc("third", clusterIP=second))  # released by the switch


def test_headless_services_have_families_and_no_addresses(core, dual_ns, dual) -> None:
    ns = dual_ns
    sel = core.create_namespaced_service(ns, svc("hs", clusterIP="None", selector={"app": "x"},
                                                 ipFamilyPolicy="PreferDualStack"))
    assert families(sel) == (["None"], ["IPv4", "IPv6"], "PreferDualStack")
    single = core.create_namespaced_service(ns, svc("hs1", clusterIP="None", selector={"app": "x"}))
    assert families(single) == (["None"], ["IPv4"], "SingleStack")
    # without selector the default is both families (its endpoints are written by hand)
    loose = core.create_namespaced_service(ns, svc("hs2", clusterIP="None"))
    assert families(loose) == (["None"], ["IPv4", "IPv6"], "RequireDualStack")


def test_the_cluster_service_cidr_lists_both_ranges(core, dual) -> None:
    api = config.new_client_from_config(config_file=dual.kubeconfig)
    try:
        obj = client.NetworkingV1Api(api).read_service_cidr("kubernetes")
    finally:
        api.close()
    assert obj.spec.cidrs == [SERVICE_V4, SERVICE_V6]
    # default/kubernetes itself stays single-stack of the primary family (as kube-apiserver makes it)
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(ApiException):
            k = core.read_namespaced_service("kubernetes", "default")
            break
        assert time.monotonic() < deadline, "no default/kubernetes Service"
        time.sleep(0.2)
    assert k.spec.ip_families == ["IPv4"] and k.spec.cluster_ip == "10.96.0.1"


def ready_pod(core: client.CoreV1Api, ns: str, name: str, node: str, ips: list[str]) -> None:
    core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "labels": {"app": "web"}},
                                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost",
                                                                                "ports": [{"containerPort": 8080}]}]}})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips], "hostIP": "192.168.33.10",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}})


def slices_by_family(dual: Server, ns: str, service: str) -> dict[str, list[str]]:
    api = config.new_client_from_config(config_file=dual.kubeconfig)
    try:
        items = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
            ns, label_selector=f"kubernetes.io/service-name={service}").items
    finally:
        api.close()
    out: dict[str, list[str]] = {}
    for s in items:
        out.setdefault(s.address_type, []).extend(a for e in s.endpoints or [] for a in e.addresses)
    return {k: sorted(v) for k, v in out.items()}


def test_endpoint_slices_one_per_family_and_nodes_get_both_pod_cidrs(core, dual_ns, dual) -> None:
    ns = dual_ns
    node = "dual-" + uuid.uuid4().hex[:6]
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    try:
        # node IPAM: a block of each family, IPv4 (the primary) first
        wait_for(lambda: len(getattr(core.read_node(node).spec, "pod_cidrs", None) or []) == 2, WAIT,
                 f"podCIDRs of {node}")
        spec = core.read_node(node).spec
        v4, v6 = spec.pod_cidrs
        assert spec.pod_cidr == v4 and in_range(v4.split("/")[0], PODS_V4) and v4.endswith("/24")
        assert in_range(v6.split("/")[0], PODS_V6) and v6.endswith("/64"), spec.pod_cidrs
        core.create_namespaced_service(ns, svc("web", selector={"app": "web"}, ipFamilyPolicy="RequireDualStack",
                                               ports=[{"port": 80, "targetPort": 8080}]))
        core.create_namespaced_service(ns, svc("web6", selector={"app": "web"}, ipFamilies=["IPv6"],
                                               ports=[{"port": 80, "targetPort": 8080}]))
        ready_pod(core, ns, "a", node, ["10.244.3.4", "fd00:10:244:3::4"])
        ready_pod(core, ns, "b", node, ["10.244.3.5", "fd00:10:244:3::5"])
        want = {"IPv4": ["10.244.3.4", "10.244.3.5"], "IPv6": ["fd00:10:244:3::4", "fd00:10:244:3::5"]}
        wait_for(lambda: slices_by_family(dual, ns, "web") == want, WAIT, "a slice per family for web")
        wait_for(lambda: slices_by_family(dual, ns, "web6") == {"IPv6": want["IPv6"]}, WAIT, "web6's IPv6 slice")
        # a Service with nothing selected keeps an empty (placeholder) slice of each family
        core.create_namespaced_service(ns, svc("idle", selector={"app": "idle"}, ipFamilyPolicy="PreferDualStack"))
        wait_for(lambda: slices_by_family(dual, ns, "idle") == {"IPv4": [], "IPv6": []}, WAIT, "idle's placeholders")
    finally:
        core.delete_node(node)


def test_require_dual_stack_on_a_single_stack_cluster_is_refused(api, ns, server) -> None:
    """The conftest's session server has one service range (IPv4)."""
    core = client.CoreV1Api(api)
    got = causes(core, ns, svc("both", ipFamilyPolicy="RequireDualStack"))
    assert got == [("spec.ipFamilyPolicy", 'Invalid value: "RequireDualStack": this cluster is not configured for '
                                           "dual-stack services")], got
    got = causes(core, ns, svc("six", ipFamilies=["IPv6"]))
    assert got == [("spec.ipFamilies[0]", 'Invalid value: "IPv6": not configured on this cluster')], got
    # PreferDualStack settles for the one family there is
    s = core.create_namespaced_service(ns, svc("prefer", ipFamilyPolicy="PreferDualStack"))
    assert s.spec.ip_families == ["IPv4"] and len(s.spec.cluster_ips) == 1 and s.spec.ip_family_policy == \
        "PreferDualStack"
