"""kdns record store: the record forms of the Kubernetes DNS specification, from objects."""

from __future__ import annotations

import ipaddress

import pytest

from kdns.records import Config, RecordStore, service_records
from kdns.wire import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A
from knet_testing.kdns import endpoint_slice, pod, service

ZONE = "cluster.local"


def ip(rr) -> str:
    return str(ipaddress.ip_address(rr[3]))


def names(records) -> set[str]:
    return set(records)


def test_clusterip_service_a_ptr_and_srv_for_named_ports_only():
    svc = service("redis-master", "my-ns", "10.96.0.30", [("http", 6379, "TCP"), ("", 1234, "TCP"),
                                                           ("dns", 53, "UDP")])
    recs = service_records(svc, [], Config())
    fqdn = "redis-master.my-ns.svc.cluster.local"
    assert [ip(rr) for rr in recs[fqdn][A]] == ["10.96.0.30"]
    assert recs["30.0.96.10.in-addr.arpa"][PTR] == [("30.0.96.10.in-addr.arpa", PTR, 5, fqdn)]
    assert recs[f"_http._tcp.{fqdn}"][SRV] == [(f"_http._tcp.{fqdn}", SRV, 5, (0, 100, 6379, fqdn))]
    assert recs[f"_dns._udp.{fqdn}"][SRV][0][3] == (0, 100, 53, fqdn)
    # The unnamed port has no SRV record; nothing else is published.
    assert names(recs) == {fqdn, "30.0.96.10.in-addr.arpa", f"_http._tcp.{fqdn}", f"_dns._udp.{fqdn}"}


def test_dual_stack_clusterip_gets_a_and_aaaa_and_ip6_ptr():
    svc = service("web", "default", "10.96.0.20", [("http", 80, "TCP")], clusterIPs=["10.96.0.20", "fd00:10:96::20"])
    recs = service_records(svc, [], Config())
    fqdn = "web.default.svc.cluster.local"
    assert ip(recs[fqdn][A][0]) == "10.96.0.20"
    assert ip(recs[fqdn][AAAA][0]) == "fd00:10:96::20"
    rev6 = ipaddress.ip_address("fd00:10:96::20").reverse_pointer
    assert recs[rev6][PTR][0][3] == fqdn


def test_headless_statefulset_hostnames_and_srv_per_endpoint():
    svc = service("sayhey-svc", "default", "None", [("http", 80, "TCP")])
    sl = endpoint_slice("sayhey-svc", endpoints=[
        {"addresses": ["10.244.1.5"], "hostname": "whaleset-0", "conditions": {"ready": True}},
        {"addresses": ["10.244.2.6"], "hostname": "whaleset-1", "conditions": {"ready": True}},
        {"addresses": ["10.244.2.7"], "hostname": "whaleset-2", "conditions": {"ready": False}},
    ], ports=[("http", 8080, "TCP")])
    recs = service_records(svc, [sl], Config())
    fqdn = "sayhey-svc.default.svc.cluster.local"
    assert sorted(ip(rr) for rr in recs[fqdn][A]) == ["10.244.1.5", "10.244.2.6"]  # ready ones only
    assert [ip(rr) for rr in recs[f"whaleset-1.{fqdn}"][A]] == ["10.244.2.6"]
    assert f"whaleset-2.{fqdn}" not in recs
    srv = recs[f"_http._tcp.{fqdn}"][SRV]
    # Headless SRV: the endpoint's port (8080, not the service's 80), one per endpoint, weights split.
    assert sorted(rr[3] for rr in srv) == [(0, 50, 8080, f"whaleset-0.{fqdn}"), (0, 50, 8080, f"whaleset-1.{fqdn}")]
    assert recs["6.2.244.10.in-addr.arpa"][PTR][0][3] == f"whaleset-1.{fqdn}"


def test_headless_without_hostname_uses_dashed_address():
    svc = service("node-js-none", "default", "None", [("web", 80, "TCP")])
    sl = endpoint_slice("node-js-none", endpoints=[{"addresses": ["10.244.1.9"]}, {"addresses": ["10.244.2.3"]}],
                        ports=[("web", 3000, "TCP")])
    recs = service_records(svc, [sl], Config())
    fqdn = "node-js-none.default.svc.cluster.local"
    assert sorted(ip(rr) for rr in recs[fqdn][A]) == ["10.244.1.9", "10.244.2.3"]
    assert ip(recs[f"10-244-1-9.{fqdn}"][A][0]) == "10.244.1.9"
    assert recs["9.1.244.10.in-addr.arpa"][PTR][0][3] == f"10-244-1-9.{fqdn}"


def test_headless_publish_not_ready_and_unready_default():
    sl = endpoint_slice("h", endpoints=[{"addresses": ["10.244.1.1"], "conditions": {"ready": False}}])
    fqdn = "h.default.svc.cluster.local"
    assert fqdn not in service_records(service("h", cluster_ip="None"), [sl], Config())
    published = service_records(service("h", cluster_ip="None", publishNotReadyAddresses=True), [sl], Config())
    assert ip(published[fqdn][A][0]) == "10.244.1.1"
    # Unset readiness means ready (the API's rule).
    sl2 = endpoint_slice("h", endpoints=[{"addresses": ["10.244.1.2"]}])
    assert ip(service_records(service("h", cluster_ip="None"), [sl2], Config())[fqdn][A][0]) == "10.244.1.2"


def test_headless_ipv6_slice_and_duplicate_addresses_across_slices():
    svc = service("h6", cluster_ip="None")
    s1 = endpoint_slice("h6", endpoints=[{"addresses": ["fd00::5"]}], address_type="IPv6", name="a")
    s2 = endpoint_slice("h6", endpoints=[{"addresses": ["10.244.1.1"]}], name="b")
    s3 = endpoint_slice("h6", endpoints=[{"addresses": ["10.244.1.1"]}], name="c")  # mid-migration duplicate
    recs = service_records(svc, [s1, s2, s3], Config())
    fqdn = "h6.default.svc.cluster.local"
    assert [ip(rr) for rr in recs[fqdn][AAAA]] == ["fd00::5"]
    assert [ip(rr) for rr in recs[fqdn][A]] == ["10.244.1.1"]
    assert f"fd00--5.{fqdn}" in recs


def test_external_name_is_a_cname_only():
    svc = service("ext", cluster_ip=None, type="ExternalName", externalName="WWW.Example.com.")
    recs = service_records(svc, [], Config())
    assert recs == {"ext.default.svc.cluster.local": {CNAME: [("ext.default.svc.cluster.local", CNAME, 5,
                                                                 "www.example.com")]}}


def test_custom_zone_and_ttl():
    recs = service_records(service("web", "prod", "10.0.0.1"), [], Config(zone="Corp.Example.", ttl=30))
    assert recs["web.prod.svc.corp.example"][A][0][2] == 30


def test_static_records():
    store = RecordStore(Config(ns_addresses=("10.96.0.10",)), serial=7)
    assert store.names[f"dns-version.{ZONE}"][TXT][0][3] == ("1.1.0",)
    assert store.names[ZONE][SOA][0][3] == (f"ns.dns.{ZONE}", f"hostmaster.{ZONE}", 7, 7200, 1800, 86400, 5)
    assert store.names[ZONE][NS][0][3] == f"ns.dns.{ZONE}"
    assert ip(store.names[f"ns.dns.{ZONE}"][A][0]) == "10.96.0.10"


def test_store_changes_report_names_and_parents():
    store = RecordStore()
    changed = store.update_service("my-ns/redis", service("redis", "my-ns", "10.96.0.5", [("http", 80, "TCP")]))
    fqdn = "redis.my-ns.svc.cluster.local"
    assert {fqdn, f"_http._tcp.{fqdn}", f"_tcp.{fqdn}", "my-ns.svc.cluster.local", "svc.cluster.local",
            "5.0.96.10.in-addr.arpa"} <= changed
    assert store.exists(f"_tcp.{fqdn}") and f"_tcp.{fqdn}" not in store.names  # empty non-terminal
    # The same object again changes nothing.
    assert store.update_service("my-ns/redis", service("redis", "my-ns", "10.96.0.5", [("http", 80, "TCP")])) == set()
    # New address: only the address-bearing names change.
    changed = store.update_service("my-ns/redis", service("redis", "my-ns", "10.96.0.6", [("http", 80, "TCP")]))
    assert changed == {fqdn, "5.0.96.10.in-addr.arpa", "6.0.96.10.in-addr.arpa"}
    # Delete: everything goes, parents included; nothing is left behind.
    changed = store.update_service("my-ns/redis", None)
    assert {fqdn, f"_tcp.{fqdn}", "my-ns.svc.cluster.local"} <= changed
    assert not store.exists(fqdn) and not store.exists("my-ns.svc.cluster.local")
    assert set(store.names) == set(RecordStore().names) and store.ents.keys() == RecordStore().ents.keys()


def test_store_merges_ptr_of_one_address_in_two_headless_services():
    store = RecordStore()
    for name in ("a", "b"):
        store.update_service(f"default/{name}", service(name, cluster_ip="None"),
                             [endpoint_slice(name, endpoints=[{"addresses": ["10.244.1.1"], "hostname": "p"}])])
    ptrs = sorted(rr[3] for rr in store.names["1.1.244.10.in-addr.arpa"][PTR])
    assert ptrs == ["p.a.default.svc.cluster.local", "p.b.default.svc.cluster.local"]
    store.update_service("default/a", None)
    assert [rr[3] for rr in store.names["1.1.244.10.in-addr.arpa"][PTR]] == ["p.b.default.svc.cluster.local"]


def test_verified_pod_records():
    store = RecordStore(Config(pods="verified"))
    changed = store.update_pod("default/web-1", pod("web-1", ip="10.244.1.5"))
    assert "10-244-1-5.default.pod.cluster.local" in changed
    assert ip(store.names["10-244-1-5.default.pod.cluster.local"][A][0]) == "10.244.1.5"
    store.update_pod("default/web-1", None)
    assert "10-244-1-5.default.pod.cluster.local" not in store.names
    assert RecordStore().update_pod("default/web-1", pod("web-1")) == set()  # insecure mode: synthesised


def test_bad_config():
    with pytest.raises(ValueError):
        Config(pods="sometimes")
