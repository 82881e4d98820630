"""Dual-stack's pure parts: the family helpers (knet.kube.ipfamily), a Service's families as the
lab API server settles them on a single- and a dual-stack cluster, the lab's dual-stack plan,
flannel's net-conf and the pod addresses the node agent reports."""

from __future__ import annotations

import pytest

from knet.kube import ipfamily
from knet.kube.models import Service
from lab.agent.status import sandbox_ips
from lab.apiserver import admission
from lab.apiserver.allocator import NodePortRange, Reservation, allocators_from, parse_service_cidrs
from lab.apiserver.resources import by_kind
from lab.apiserver.strategy import Config
from lab.bringup import overlay
from lab.net import topology

SVC = by_kind("", "Service")
DUAL = Config.with_ranges(parse_service_cidrs("10.96.0.0/12,fd00:10:96::/112"), NodePortRange())
SINGLE = Config.with_ranges(parse_service_cidrs("10.96.0.0/12"), NodePortRange())
V6_PRIMARY = Config.with_ranges(parse_service_cidrs("fd00:10:96::/112,10.96.0.0/12"), NodePortRange())


def admit(spec: dict, cfg: Config = DUAL, old: dict | None = None) -> tuple[dict, list[dict]]:
    obj = {"metadata": {"name": "s", "namespace": "default"}, "spec": {"ports": [{"port": 80}], **spec}}
    with Reservation(allocators_from(SVC.strategy.ranges(cfg))) as res:
        causes = admission.admit(SVC, obj, old, cfg, res)
    return obj, causes


def test_family_helpers() -> None:
    assert ipfamily.family_of("10.0.0.1") == "IPv4" and ipfamily.family_of("fd00::/64") == "IPv6"
    assert ipfamily.family_or_none("nonsense") is None
    assert ipfamily.of_family(["10.0.0.1", "fd00::1", "x"], "IPv6") == ["fd00::1"]
    assert ipfamily.is_dual_stack(["fd00::1", "10.0.0.1"]) and not ipfamily.is_dual_stack(["10.0.0.1", "10.0.0.2"])
    dual = Service.model_validate({"metadata": {"name": "s"}, "spec": {"clusterIPs": ["10.0.0.1", "fd00::1"]}})
    assert ipfamily.service_families(dual) == ["IPv4", "IPv6"]
    headless = Service.model_validate({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}})
    assert ipfamily.service_families(headless) == ["IPv4", "IPv6"]  # an older server's: both
    named = Service.model_validate({"metadata": {"name": "s"}, "spec": {"ipFamilies": ["IPv6"], "clusterIP": "None"}})
    assert ipfamily.service_families(named) == ["IPv6"]


@pytest.mark.parametrize(("spec", "cfg", "families", "policy"), [
    ({}, DUAL, ["IPv4"], "SingleStack"),
    ({}, V6_PRIMARY, ["IPv6"], "SingleStack"),
    ({"ipFamilies": ["IPv6"]}, DUAL, ["IPv6"], "SingleStack"),
    ({"ipFamilyPolicy": "PreferDualStack"}, DUAL, ["IPv4", "IPv6"], "PreferDualStack"),
    ({"ipFamilyPolicy": "PreferDualStack"}, SINGLE, ["IPv4"], "PreferDualStack"),
    ({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}, DUAL, ["IPv6", "IPv4"], "RequireDualStack"),
    ({"clusterIP": "None", "selector": {"a": "b"}}, DUAL, ["IPv4"], "SingleStack"),
    ({"clusterIP": "None"}, SINGLE, ["IPv4", "IPv6"], "RequireDualStack"),  # selectorless headless
])
def test_families_a_service_gets(spec: dict, cfg: Config, families: list[str], policy: str) -> None:
    obj, causes = admit(spec, cfg)
    assert causes == []
    assert obj["spec"]["ipFamilies"] == families and obj["spec"]["ipFamilyPolicy"] == policy
    if obj["spec"].get("clusterIP") != "None":
        ips = obj["spec"]["clusterIPs"]
        assert [ipfamily.family_of(ip) for ip in ips] == families and obj["spec"]["clusterIP"] == ips[0]


@pytest.mark.parametrize(("spec", "cfg", "field", "words"), [
    ({"ipFamilyPolicy": "RequireDualStack"}, SINGLE, "spec.ipFamilyPolicy",
     "this cluster is not configured for dual-stack services"),
    ({"ipFamilies": ["IPv6"]}, SINGLE, "spec.ipFamilies[0]", "not configured on this cluster"),
    ({"clusterIP": "fd00:10:96::5"}, SINGLE, "spec.clusterIPs[0]", "IPv6 is not configured on this cluster"),
    ({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}, DUAL, "spec.ipFamilyPolicy",
     "when multiple IP families are specified"),
    ({"clusterIPs": ["10.96.0.5"]}, DUAL, "spec.clusterIPs", "must be empty when `clusterIP` is not specified"),
    ({"type": "ExternalName", "externalName": "x.example", "ipFamilies": ["IPv4"]}, DUAL, "spec.ipFamilies",
     "may not be set for ExternalName services"),
])
def test_refused_family_fields(spec: dict, cfg: Config, field: str, words: str) -> None:
    _, causes = admit(spec, cfg)
    assert any(c["field"] == field and words in c["message"] for c in causes), causes


def test_upgrade_then_downgrade_keeps_the_primary_address() -> None:
    old, _ = admit({})
    up, causes = admit({"ipFamilyPolicy": "PreferDualStack"}, old=old)
    assert causes == [] and up["spec"]["clusterIPs"][0] == old["spec"]["clusterIP"]
    assert len(up["spec"]["clusterIPs"]) == 2
    down, causes = admit({**up["spec"], "ipFamilyPolicy": "SingleStack"}, old=up)
    assert causes == [] and down["spec"]["clusterIPs"] == old["spec"]["clusterIPs"]
    assert down["spec"]["ipFamilies"] == ["IPv4"]
    # released with the write: the downgrade holds one address less
    assert len(SVC.strategy.held(up)) - len(SVC.strategy.held(down)) == 1


def test_dual_stack_plan_and_flannel_net_conf() -> None:
    p = topology.plan("kxplan", 2, overlay="vxlan", ip_family="dual")
    assert [n.ip6 for n in p.nodes] == ["fd00:33::11", "fd00:33::12"] and p.ctl.cidr6 == "fd00:33::2/64"
    assert topology.describe(p)["service_cidrs"] == ["10.96.0.0/12", "fd00:10:96::/112"]
    assert topology.pod_cidrs("dual") == "10.244.0.0/16,fd00:10:244::/56"
    assert overlay.net_conf("vxlan", "dual") == {"Network": "10.244.0.0/16", "EnableIPv6": True,
                                                 "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}}
    assert "EnableIPv6" not in overlay.net_conf("vxlan") and topology.plan("kxplan", 1).nodes[0].ip6 == ""
    for family, overlay_name, words in (("ipv6", "vxlan", "IPv6-only"), ("dual", "static", "static overlay"),
                                        ("ipv5", "vxlan", "ip family")):
        with pytest.raises(topology.PlanError, match=words):
            topology.plan("kxplan", 1, overlay=overlay_name, ip_family=family)


def test_agent_reports_one_address_per_family_in_the_results_order() -> None:
    record = {"ip": "10.244.1.2", "result": {"ips": [{"address": "10.244.1.2/24"}, {"address": "fd00:10:244:1::2/64"},
                                                      {"address": "fd00:10:244:1::3/64"}]}}
    assert sandbox_ips(record) == ["10.244.1.2", "fd00:10:244:1::2"]
    assert sandbox_ips({"ip": "10.244.1.2"}) == ["10.244.1.2"] and sandbox_ips(None) == []
