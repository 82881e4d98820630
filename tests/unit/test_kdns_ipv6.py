"""kdns and IPv6: the Kubernetes DNS specification's IPv6 records (schema 1.1.0, kubernetes/dns
docs/specification.md), with its own examples where it gives them, and the pod records kdns
serves beside them.

  §2.3.1  AAAA for an IPv6 ClusterIP (a dual-stack Service has both A and AAAA)
  §2.3.2  SRV of a ClusterIP service; "the Additional section ... may include the Service A/AAAA record"
  §2.3.3  PTR "as a sequence of nibbles in reverse order" under ip6.arpa for an IPv6 ClusterIP
  §2.4.1  headless: AAAA per ready endpoint, and per ready endpoint's hostname (one per IP)
  §2.4.2  headless SRV: N ready endpoints x M named ports; additional A/AAAA of the targets
  §2.4.3  headless PTR in ip6.arpa -> <hostname>.<service>.<ns>.svc.<zone>
  §2.5    ExternalName asked for AAAA: the CNAME, the target resolved outside
A family the name lacks is NODATA (NOERROR, no answer, the zone's SOA), never NXDOMAIN: the name
exists (RFC 2308 §2.2, RFC 4074 §3 on AAAA queries for names with only A records).
"""

from __future__ import annotations

import ipaddress

import pytest

from kdns.answer import Scope, resolve
from kdns.records import Config, RecordStore, pod_records
from kdns.wire import AAAA, NOERROR, NXDOMAIN, PTR, SOA, SRV, A, Query, build, parse_query
from knet_testing.kdns import endpoint_slice, pod, query, service

Z = "cluster.local"
SPEC_V6 = "2001:db8::1"  # the specification's example address
SPEC_PTR = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"  # ... of 2001:db8::1


def addrs(rrs) -> list[str]:
    return sorted(str(ipaddress.ip_address(rr[3])) for rr in rrs if rr[1] in (A, AAAA))


def types(rrs) -> list[int]:
    return sorted(rr[1] for rr in rrs)


def assert_nodata(reply) -> None:
    assert reply.rcode == NOERROR and reply.answer == []
    assert [(rr[0], rr[1]) for rr in reply.authority] == [(Z, SOA)]


@pytest.fixture
def store() -> RecordStore:
    s = RecordStore(Config())
    # §2.3: the specification's `kubernetes` service as an IPv6 single-stack one, and dual-stack and
    # IPv4-only services next to it (the ranges: 10.96.0.0/12 and fd00:10:96::/112).
    s.update_service("default/kubernetes", service("kubernetes", "default", SPEC_V6, [("https", 443, "TCP")],
                                                   clusterIPs=[SPEC_V6], ipFamilies=["IPv6"]))
    s.update_service("default/dual", service("dual", "default", "10.96.0.20", [("http", 80, "TCP")],
                                             clusterIPs=["10.96.0.20", "fd00:10:96::20"],
                                             ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack"))
    s.update_service("default/v4", service("v4", "default", "10.96.0.21", [("http", 80, "TCP")]))
    # §2.4: headless, one slice per family as the EndpointSlice controller writes them for a
    # dual-stack Service: hostnames on two pods (StatefulSet style), one without, one not ready.
    s.update_service("default/headless", service("headless", "default", "None", [("https", 443, "TCP")],
                                                 ipFamilies=["IPv4", "IPv6"]), [
        endpoint_slice("headless", name="headless-v4", ports=[("https", 443, "TCP")], endpoints=[
            {"addresses": ["10.244.1.5"], "hostname": "my-pet"},
            {"addresses": ["10.244.2.6"], "hostname": "my-pet-2"},
            {"addresses": ["10.244.2.7"]},
            {"addresses": ["10.244.2.8"], "conditions": {"ready": False}}]),
        endpoint_slice("headless", name="headless-v6", address_type="IPv6", ports=[("https", 443, "TCP")],
                       endpoints=[
            {"addresses": [SPEC_V6], "hostname": "my-pet"},
            {"addresses": ["2001:db8::2"], "hostname": "my-pet-2"},
            {"addresses": ["2001:db8::3"]},
            {"addresses": ["2001:db8::4"], "conditions": {"ready": False}}])])
    # An IPv6 single-stack headless service, and one whose IPv6 endpoints are none of them ready.
    s.update_service("default/h6", service("h6", "default", "None", [("web", 80, "TCP")], ipFamilies=["IPv6"]),
                     [endpoint_slice("h6", name="h6-a", address_type="IPv6", ports=[("web", 8080, "TCP")],
                                     endpoints=[{"addresses": ["fd00:10:244:1::5"]}])])
    s.update_service("default/h6-unready", service("h6-unready", "default", "None", ipFamilies=["IPv6"]),
                     [endpoint_slice("h6-unready", name="h6-unready-a", address_type="IPv6",
                                     endpoints=[{"addresses": ["fd00:10:244:1::9"], "conditions": {"ready": False}}])])
    s.update_service("default/foo", service("foo", cluster_ip=None, type="ExternalName",
                                            externalName="www.example.com"))
    return s


# --- §2.3 a Service with ClusterIP ------------------------------------------------------------------

def test_2_3_1_aaaa_for_an_ipv6_clusterip(store):
    res = resolve(store, f"kubernetes.default.svc.{Z}", AAAA)
    assert res.reply.rcode == NOERROR and res.reply.aa
    assert [(rr[0], rr[1], rr[2]) for rr in res.reply.answer] == [(f"kubernetes.default.svc.{Z}", AAAA, 5)]
    assert addrs(res.reply.answer) == [SPEC_V6]
    assert_nodata(resolve(store, f"kubernetes.default.svc.{Z}", A).reply)  # no IPv4 ClusterIP


def test_2_3_1_dual_stack_service_has_both_and_single_stack_the_other_is_nodata(store):
    fqdn = f"dual.default.svc.{Z}"
    assert addrs(resolve(store, fqdn, A).reply.answer) == ["10.96.0.20"]
    assert addrs(resolve(store, fqdn, AAAA).reply.answer) == ["fd00:10:96::20"]
    assert_nodata(resolve(store, f"v4.default.svc.{Z}", AAAA).reply)


def test_2_3_2_srv_additional_section_has_the_service_aaaa(store):
    res = resolve(store, f"_https._tcp.kubernetes.default.svc.{Z}", SRV)
    assert [rr[3] for rr in res.reply.answer] == [(0, 100, 443, f"kubernetes.default.svc.{Z}")]
    assert types(res.reply.additional) == [AAAA] and addrs(res.reply.additional) == [SPEC_V6]
    # Dual-stack: one SRV record (one target), both families of the target in the additional section.
    res = resolve(store, f"_http._tcp.dual.default.svc.{Z}", SRV)
    assert [rr[3] for rr in res.reply.answer] == [(0, 100, 80, f"dual.default.svc.{Z}")]
    assert types(res.reply.additional) == [A, AAAA]
    assert addrs(res.reply.additional) == ["10.96.0.20", "fd00:10:96::20"]


def test_2_3_3_ptr_in_ip6_arpa_with_the_specifications_question(store):
    res = resolve(store, SPEC_PTR, PTR)
    assert res.reply.rcode == NOERROR and res.reply.aa and not res.forward
    # (my-pet's address is the same in this store: test_same_address_in_two_services_gets_both_ptrs)
    assert (SPEC_PTR, PTR, f"kubernetes.default.svc.{Z}") in [(rr[0], rr[1], rr[3]) for rr in res.reply.answer]
    # Every address of a dual-stack service, in its own reverse tree; 32 nibbles, no compression.
    v6_ptr = ipaddress.ip_address("fd00:10:96::20").reverse_pointer
    assert v6_ptr.count(".") == 33 and v6_ptr.endswith(".ip6.arpa")
    assert resolve(store, v6_ptr, PTR).reply.answer[0][3] == f"dual.default.svc.{Z}"
    assert resolve(store, "20.0.96.10.in-addr.arpa", PTR).reply.answer[0][3] == f"dual.default.svc.{Z}"


def test_2_3_3_unknown_ipv6_reverse_names_go_on(store):
    other = ipaddress.ip_address("fd00:10:96::99").reverse_pointer
    assert resolve(store, other, PTR).forward  # fallthrough (kdns's default, CoreDNS's `fallthrough ip6.arpa`)
    closed = resolve(store, other, PTR, scope=Scope(fallthrough=None))
    assert closed.reply.rcode == NXDOMAIN and [(rr[0], rr[1]) for rr in closed.reply.authority] == [("ip6.arpa", SOA)]
    # A partial nibble name (a reverse /64) is no PTR of ours either.
    assert resolve(store, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", PTR).forward


# --- §2.4 a headless Service -----------------------------------------------------------------------

def test_2_4_1_aaaa_per_ready_endpoint(store):
    res = resolve(store, f"headless.default.svc.{Z}", AAAA)
    assert types(res.reply.answer) == [AAAA] * 3
    assert addrs(res.reply.answer) == ["2001:db8::1", "2001:db8::2", "2001:db8::3"]  # not ready ::4: absent
    assert addrs(resolve(store, f"headless.default.svc.{Z}", A).reply.answer) == [
        "10.244.1.5", "10.244.2.6", "10.244.2.7"]


def test_2_4_1_aaaa_per_hostname_one_per_ip(store):
    res = resolve(store, f"my-pet.headless.default.svc.{Z}", AAAA)
    assert addrs(res.reply.answer) == [SPEC_V6]
    assert addrs(resolve(store, f"my-pet.headless.default.svc.{Z}", A).reply.answer) == ["10.244.1.5"]
    # Without a hostname the system-assigned one is the dashed address (CoreDNS's form: ':' -> '-').
    assert addrs(resolve(store, f"2001-db8--3.headless.default.svc.{Z}", AAAA).reply.answer) == ["2001:db8::3"]
    assert resolve(store, f"2001-db8--4.headless.default.svc.{Z}", AAAA).reply.rcode == NXDOMAIN  # not ready
    # Two IPv6 addresses for one hostname: one AAAA each.
    s = RecordStore(Config())
    s.update_service("default/multi", service("multi", "default", "None"), [
        endpoint_slice("multi", name="m6", address_type="IPv6", endpoints=[
            {"addresses": ["fd00:10:244:1::5"], "hostname": "pet"},
            {"addresses": ["fd00:10:244:2::5"], "hostname": "pet"}])])
    assert addrs(resolve(s, f"pet.multi.default.svc.{Z}", AAAA).reply.answer) == [
        "fd00:10:244:1::5", "fd00:10:244:2::5"]


def test_2_4_1_single_family_headless_and_no_ready_endpoints(store):
    fqdn = f"h6.default.svc.{Z}"
    assert addrs(resolve(store, fqdn, AAAA).reply.answer) == ["fd00:10:244:1::5"]
    assert_nodata(resolve(store, fqdn, A).reply)  # the name exists, with AAAA only
    # "If there are no ready endpoints for the headless Service, the answer should be NXDOMAIN."
    for qtype in (A, AAAA):
        reply = resolve(store, f"h6-unready.default.svc.{Z}", qtype).reply
        assert reply.rcode == NXDOMAIN and reply.authority[0][1] == SOA


def test_2_4_2_srv_n_ready_endpoints_by_m_named_ports_with_aaaa_glue(store):
    res = resolve(store, f"_https._tcp.headless.default.svc.{Z}", SRV)
    targets = sorted(rr[3][3] for rr in res.reply.answer)
    # my-pet and my-pet-2 each have an address in both families: one SRV record per hostname; the
    # endpoints without one are an endpoint per family (their system-assigned names differ).
    assert targets == sorted(f"{h}.headless.default.svc.{Z}" for h in ("my-pet", "my-pet-2", "10-244-2-7",
                                                                          "2001-db8--3"))
    assert {rr[3][2] for rr in res.reply.answer} == {443} and {rr[3][0] for rr in res.reply.answer} == {0}
    assert addrs(res.reply.additional) == ["10.244.1.5", "10.244.2.6", "10.244.2.7",
                                           "2001:db8::1", "2001:db8::2", "2001:db8::3"]
    # A single-stack IPv6 headless service: the endpoint's port (8080), its AAAA as glue.
    res = resolve(store, f"_web._tcp.h6.default.svc.{Z}", SRV)
    assert [rr[3][2:] for rr in res.reply.answer] == [(8080, f"fd00-10-244-1--5.h6.default.svc.{Z}")]
    assert types(res.reply.additional) == [AAAA] and addrs(res.reply.additional) == ["fd00:10:244:1::5"]


def test_2_4_3_ptr_of_headless_endpoints_in_ip6_arpa(store):
    assert resolve(store, SPEC_PTR, PTR).reply.answer  # (the ClusterIP of `kubernetes` holds it too)
    two = ipaddress.ip_address("2001:db8::2").reverse_pointer
    assert [rr[3] for rr in resolve(store, two, PTR).reply.answer] == [f"my-pet-2.headless.default.svc.{Z}"]
    three = ipaddress.ip_address("2001:db8::3").reverse_pointer
    assert [rr[3] for rr in resolve(store, three, PTR).reply.answer] == [f"2001-db8--3.headless.default.svc.{Z}"]
    unready = ipaddress.ip_address("2001:db8::4").reverse_pointer
    assert resolve(store, unready, PTR).forward  # not ready: not published


def test_same_address_in_two_services_gets_both_ptrs(store):
    # 2001:db8::1 is the ClusterIP of `kubernetes` and my-pet's address: the store merges owners.
    ptrs = sorted(rr[3] for rr in resolve(store, SPEC_PTR, PTR).reply.answer)
    assert ptrs == [f"kubernetes.default.svc.{Z}", f"my-pet.headless.default.svc.{Z}"]


# --- §2.5 ExternalName -----------------------------------------------------------------------------

def test_2_5_externalname_asked_for_aaaa(store):
    res = resolve(store, f"foo.default.svc.{Z}", AAAA)
    assert [(rr[1], rr[3]) for rr in res.reply.answer] == [(5, "www.example.com")]
    assert res.chase == "www.example.com"  # the server asks the upstream for www.example.com AAAA


# --- pod records (kdns's extension; 1.1.0 dropped the deprecated §2.6 form) ----------------------

def test_pod_records_insecure_both_families(store):
    assert addrs(resolve(store, f"1-2-3-4.ns.pod.{Z}", A).reply.answer) == ["1.2.3.4"]
    assert addrs(resolve(store, f"fd00-10-244-1--5.ns.pod.{Z}", AAAA).reply.answer) == ["fd00:10:244:1::5"]
    assert addrs(resolve(store, f"2001-db8-0-0-0-0-0-1.ns.pod.{Z}", AAAA).reply.answer) == [SPEC_V6]
    assert_nodata(resolve(store, f"fd00-10-244-1--5.ns.pod.{Z}", A).reply)
    assert_nodata(resolve(store, f"1-2-3-4.ns.pod.{Z}", AAAA).reply)
    for bad in ("fd00-10-244", "fd00---1", "gggg--1", "fd00-1-2-3"):
        assert resolve(store, f"{bad}.ns.pod.{Z}", AAAA).reply.rcode == NXDOMAIN, bad


def test_pod_records_verified_from_pod_ips():
    p = pod("web-0", "default", "10.244.1.5")
    p.status.pod_ips.append(type(p.status.pod_ips[0])(ip="fd00:10:244:1::5"))
    recs = pod_records(p, Config(pods="verified"))
    assert addrs(recs[f"10-244-1-5.default.pod.{Z}"][A]) == ["10.244.1.5"]
    assert addrs(recs[f"fd00-10-244-1--5.default.pod.{Z}"][AAAA]) == ["fd00:10:244:1::5"]
    s = RecordStore(Config(pods="verified"))
    s.update_pod("default/web-0", p)
    assert addrs(resolve(s, f"fd00-10-244-1--5.default.pod.{Z}", AAAA).reply.answer) == ["fd00:10:244:1::5"]
    assert resolve(s, f"fd00-10-244-1--6.default.pod.{Z}", AAAA).reply.rcode == NXDOMAIN  # no such pod
    s.update_pod("default/web-0", None)
    assert resolve(s, f"fd00-10-244-1--5.default.pod.{Z}", AAAA).reply.rcode == NXDOMAIN


# --- on the wire -----------------------------------------------------------------------------------

def test_aaaa_and_ip6_ptr_on_the_wire(store):
    """The 16-byte AAAA RDATA goes into the message; an upper-case 34-label PTR question finds
    the record (names compare case-insensitively, §2.1)."""
    q: Query = parse_query(query(f"KUBERNETES.default.svc.{Z}", AAAA))  # case-insensitive question
    res = resolve(store, q.qname, q.qtype)
    data, truncated = build(q, res.reply, q.udp_limit)
    assert not truncated and ipaddress.IPv6Address(SPEC_V6).packed in data
    assert b"KUBERNETES" in data  # the question is echoed as asked
    q = parse_query(query(SPEC_PTR.upper(), PTR))
    res = resolve(store, q.qname, q.qtype)
    assert res.reply.answer and not res.forward
