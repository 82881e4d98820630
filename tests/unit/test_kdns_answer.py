"""kdns answer builder: positive answers, NXDOMAIN vs NODATA, SOA, SRV glue, CNAME, PTR, pods."""

from __future__ import annotations

import ipaddress

import pytest

from kdns.answer import pod_address, resolve, round_robin
from kdns.records import Config, RecordStore
from kdns.wire import AAAA, ANY, AXFR, CNAME, MX, NOERROR, NS, NXDOMAIN, PTR, REFUSED, SOA, SRV, TXT, A
from knet_testing.kdns import endpoint_slice, service

Z = "cluster.local"


@pytest.fixture
def store() -> RecordStore:
    s = RecordStore(Config(ns_addresses=("10.96.0.10",)))
    s.update_service("default/web", service("web", "default", "10.96.0.20", [("http", 80, "TCP")]))
    s.update_service("my-ns/redis-master", service("redis-master", "my-ns", "10.96.0.30", [("http", 6379, "TCP")]))
    s.update_service("default/sayhey-svc", service("sayhey-svc", "default", "None", [("http", 80, "TCP")]),
                     [endpoint_slice("sayhey-svc", endpoints=[
                         {"addresses": ["10.244.1.5"], "hostname": "whaleset-0"},
                         {"addresses": ["10.244.2.6"], "hostname": "whaleset-1"}], ports=[("http", 8080, "TCP")])])
    s.update_service("default/node-js-none", service("node-js-none", "default", "None"),
                     [endpoint_slice("node-js-none", endpoints=[{"addresses": ["10.244.1.9"]},
                                                                {"addresses": ["10.244.2.3"]}])])
    s.update_service("default/ext", service("ext", cluster_ip=None, type="ExternalName",
                                            externalName="www.example.com"))
    s.update_service("default/alias", service("alias", cluster_ip=None, type="ExternalName",
                                              externalName=f"web.default.svc.{Z}"))
    s.update_service("default/empty-headless", service("empty-headless", cluster_ip="None"), [])
    return s


def addrs(rrs) -> list[str]:
    return sorted(str(ipaddress.ip_address(rr[3])) for rr in rrs if rr[1] in (A, AAAA))


def test_clusterip_a(store):
    res = resolve(store, f"web.default.svc.{Z}", A)
    assert res.reply.rcode == NOERROR and res.reply.aa and addrs(res.reply.answer) == ["10.96.0.20"]
    assert res.deps == {f"web.default.svc.{Z}"} and not res.forward


def test_headless_returns_endpoint_addresses(store):
    assert addrs(resolve(store, f"node-js-none.default.svc.{Z}", A).reply.answer) == ["10.244.1.9", "10.244.2.3"]
    assert addrs(resolve(store, f"whaleset-1.sayhey-svc.default.svc.{Z}", A).reply.answer) == ["10.244.2.6"]


def test_headless_without_ready_endpoints_is_nxdomain(store):
    res = resolve(store, f"empty-headless.default.svc.{Z}", A)
    assert res.reply.rcode == NXDOMAIN and res.reply.authority[0][1] == SOA


def test_srv_with_glue(store):
    res = resolve(store, f"_http._tcp.redis-master.my-ns.svc.{Z}", SRV)
    assert [rr[3] for rr in res.reply.answer] == [(0, 100, 6379, f"redis-master.my-ns.svc.{Z}")]
    assert addrs(res.reply.additional) == ["10.96.0.30"]
    res = resolve(store, f"_http._tcp.sayhey-svc.default.svc.{Z}", SRV)
    assert sorted(rr[3][3] for rr in res.reply.answer) == [f"whaleset-0.sayhey-svc.default.svc.{Z}",
                                                          f"whaleset-1.sayhey-svc.default.svc.{Z}"]
    assert addrs(res.reply.additional) == ["10.244.1.5", "10.244.2.6"]
    # The answer depends on its targets too (their change must drop it from the cache).
    assert f"whaleset-0.sayhey-svc.default.svc.{Z}" in res.deps


def test_nodata_vs_nxdomain(store):
    cases = {
        (f"web.default.svc.{Z}", AAAA): NOERROR,  # exists, no such type
        (f"web.default.svc.{Z}", SRV): NOERROR,
        (f"_tcp.redis-master.my-ns.svc.{Z}", SRV): NOERROR,  # empty non-terminal
        (f"my-ns.svc.{Z}", A): NOERROR,
        (f"svc.{Z}", A): NOERROR,
        (Z, A): NOERROR,
        (f"nope.default.svc.{Z}", A): NXDOMAIN,
        (f"_https._tcp.redis-master.my-ns.svc.{Z}", SRV): NXDOMAIN,
        (f"web.other-ns.svc.{Z}", A): NXDOMAIN,
        (f"other-ns.svc.{Z}", A): NXDOMAIN,
        (f"x.web.default.svc.{Z}", A): NXDOMAIN,
        (f"google.com.default.svc.{Z}", A): NXDOMAIN,  # a search-path expansion
    }
    for (name, qtype), rcode in cases.items():
        reply = resolve(store, name, qtype).reply
        assert reply.rcode == rcode, name
        assert reply.answer == [], name
        soa = reply.authority[0]
        assert soa[1] == SOA and soa[0] == Z and soa[2] == 5 and soa[3][-1] == 5, name  # negative TTL 5 s


def test_external_name_cname_and_chase(store):
    res = resolve(store, f"ext.default.svc.{Z}", A)
    assert [rr[1:] for rr in res.reply.answer] == [(CNAME, 5, "www.example.com")]
    assert res.chase == "www.example.com" and not res.forward
    # Asked for the CNAME itself: no chase.
    assert resolve(store, f"ext.default.svc.{Z}", CNAME).chase is None
    # A CNAME into the zone is followed here, and the target becomes a dependency.
    res = resolve(store, f"alias.default.svc.{Z}", A)
    assert [rr[1] for rr in res.reply.answer] == [CNAME, A] and res.chase is None
    assert f"web.default.svc.{Z}" in res.deps


def test_ptr_for_clusterip_and_headless_endpoint(store):
    assert resolve(store, "20.0.96.10.in-addr.arpa", PTR).reply.answer[0][3] == f"web.default.svc.{Z}"
    assert resolve(store, "6.2.244.10.in-addr.arpa", PTR).reply.answer[0][3] == f"whaleset-1.sayhey-svc.default.svc.{Z}"
    # An address we know nothing about falls through to the upstream.
    assert resolve(store, "1.1.168.192.in-addr.arpa", PTR).forward


def test_dns_version_soa_ns(store):
    assert resolve(store, f"dns-version.{Z}", TXT).reply.answer[0][3] == ("1.1.0",)
    assert resolve(store, Z, SOA).reply.answer[0][1] == SOA
    res = resolve(store, Z, NS)
    assert res.reply.answer[0][3] == f"ns.dns.{Z}" and addrs(res.reply.additional) == ["10.96.0.10"]


def test_pod_records_insecure(store):
    assert addrs(resolve(store, f"10-244-1-5.default.pod.{Z}", A).reply.answer) == ["10.244.1.5"]
    assert addrs(resolve(store, f"1-2-3-4.any-ns.pod.{Z}", A).reply.answer) == ["1.2.3.4"]
    assert addrs(resolve(store, f"fd00--1.default.pod.{Z}", AAAA).reply.answer) == ["fd00::1"]
    assert resolve(store, f"10-244-1-5.default.pod.{Z}", AAAA).reply.rcode == NOERROR  # NODATA
    assert resolve(store, f"default.pod.{Z}", A).reply.rcode == NOERROR
    assert resolve(store, f"pod.{Z}", A).reply.rcode == NOERROR
    for bad in ("300-1-1-1", "1-2-3", "a-b-c-d", "x.1-2-3-4"):
        assert resolve(store, f"{bad}.default.pod.{Z}", A).reply.rcode == NXDOMAIN, bad


def test_pod_records_disabled_and_verified():
    s = RecordStore(Config(pods="disabled"))
    assert resolve(s, f"10-244-1-5.default.pod.{Z}", A).reply.rcode == NXDOMAIN
    assert pod_address("10-0-0-1") is not None and pod_address("256-0-0-1") is None


def test_outside_zone_is_forwarded_and_transfers_refused(store):
    assert resolve(store, "example.com", A).forward
    assert resolve(store, Z, AXFR).reply.rcode == REFUSED
    assert resolve(store, f"dns-version.{Z}", TXT, qclass=3).reply.rcode == REFUSED  # CHAOS


def test_any(store):
    res = resolve(store, Z, ANY)
    assert {rr[1] for rr in res.reply.answer} == {SOA, NS}


def test_case_insensitive_lookup_is_the_callers_normalisation(store):
    # Names reach the builder lowercased by the wire parser; the store's names are lowercase.
    assert all(name == name.lower() for name in store.names)


def _rr(rtype: int, data: object) -> tuple:
    return ("x.default.svc.cluster.local", rtype, 5, data)


@pytest.mark.parametrize("answer, expected", [
    ([], None),
    ([_rr(A, "10.0.0.1")], None),  # one address: nothing to reorder, the answer stays cacheable
    ([_rr(CNAME, "y"), _rr(A, "10.0.0.1")], None),
    ([_rr(A, "10.0.0.1"), _rr(A, "10.0.0.2"), _rr(A, "10.0.0.3")],
     [_rr(A, "10.0.0.3"), _rr(A, "10.0.0.2"), _rr(A, "10.0.0.1")]),
    # CNAMEs first, other types next, then the shuffled addresses and MX records (CoreDNS's order).
    ([_rr(A, "10.0.0.1"), _rr(CNAME, "y"), _rr(AAAA, "fd00::1"), _rr(TXT, ("t",)), _rr(MX, (1, "m"))],
     [_rr(CNAME, "y"), _rr(TXT, ("t",)), _rr(AAAA, "fd00::1"), _rr(A, "10.0.0.1"), _rr(MX, (1, "m"))]),
    ([_rr(MX, (1, "a")), _rr(MX, (2, "b"))], [_rr(MX, (2, "b")), _rr(MX, (1, "a"))]),
])
def test_loadbalance_round_robin(answer, expected):
    assert round_robin(list(answer), list.reverse) == expected
