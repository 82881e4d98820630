"""The ebpf data path's pure parts: struct packing (checked against kproxy.c), stable set ids,
what a service port compiles into, and the order map changes are applied in."""

from __future__ import annotations

import ctypes as ct
import re
import socket
from pathlib import Path

import pytest

from kproxy.ebpf import maps
from kproxy.ebpf.maps import FLAG_MASQ, SCOPE_EXT, SCOPE_SOCK, Backend, FeKey, FeVal, MemberKey, SlotKey
from kproxy.model import Endpoint, ServicePort

C_SOURCE = Path(maps.__file__).with_name("kproxy.c").read_text()
C_SIZES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}
CT_SIZES = {ct.c_uint8: 1, ct.c_uint16: 2, ct.c_uint32: 4, ct.c_uint64: 8}


def c_fields(struct: str) -> list[tuple[str, int]]:
    body = re.search(rf"struct {struct} \{{(.*?)\}};", C_SOURCE, re.S).group(1)
    return [(name, C_SIZES[typ]) for typ, name in re.findall(r"(__u\d+) (\w+);", body)]


@pytest.mark.parametrize("struct,cls", [
    ("fe_key", maps.CFeKey), ("fe_val", maps.CFeVal), ("slot_key", maps.CSlotKey), ("backend", maps.CBackend),
    ("member_key", maps.CMemberKey), ("ct_key", maps.CCtKey),
])
def test_ctypes_structs_mirror_the_c_source(struct, cls):
    ours = [(name, CT_SIZES[typ]) for name, typ in cls._fields_]
    assert ours == c_fields(struct)
    assert ct.sizeof(cls) == sum(size for _, size in ours)  # no hidden padding on either side


def test_addresses_and_ports_are_packed_in_network_order():
    key = maps.pack_fe_key(FeKey("10.96.0.1", 8080, socket.IPPROTO_TCP, SCOPE_EXT))
    assert bytes(key) == socket.inet_aton("10.96.0.1") + (8080).to_bytes(2, "big") + bytes([6, 1])
    assert maps.unpack_fe_key(key) == FeKey("10.96.0.1", 8080, 6, 1)
    b = maps.pack_backend(Backend("10.99.0.7", 53))
    assert bytes(b) == socket.inet_aton("10.99.0.7") + b"\x00\x35\x00\x00"
    assert maps.unpack_backend(b) == Backend("10.99.0.7", 53)
    m = maps.pack_member_key(MemberKey(7, "1.2.3.4", 443))
    assert bytes(m) == (7).to_bytes(4, "little") + socket.inet_aton("1.2.3.4") + b"\x01\xbb\x00\x00"
    assert maps.unpack_member_key(m) == MemberKey(7, "1.2.3.4", 443)
    v = maps.pack_fe_val(FeVal(5, 3, 10800, FLAG_MASQ))
    assert maps.unpack_fe_val(v) == FeVal(5, 3, 10800, FLAG_MASQ)
    assert maps.unpack_slot_key(maps.pack_slot_key(SlotKey(9, 2))) == SlotKey(9, 2)


def test_set_ids_are_stable_nonzero_and_collision_free():
    a, b = maps.SetIds(), maps.SetIds()
    owners = [f"ns/svc{i}/tcp/cluster" for i in range(2000)]
    ids = [a.get(o) for o in owners]
    assert ids == [b.get(o) for o in owners]  # a restarted daemon derives the same ids
    assert len(set(ids)) == len(ids) and 0 not in ids and max(ids) < 2**31
    # A collision probes to the next free id.
    c = maps.SetIds()
    c.owner_of[maps.SetIds().get("x")] = "taken"
    assert c.get("x") != maps.SetIds().get("x")
    c.release("x")
    assert "x" not in c.by_owner


def ep(ip: str, node: str = "n1", **kw) -> Endpoint:
    return Endpoint(ip, 8080, node_name=node, **kw)


def sp(**kw) -> ServicePort:
    base = dict(namespace="default", name="web", port_name="", protocol="TCP", port=80, cluster_ips=("10.96.0.10",))
    base.update(kw)
    return ServicePort(**base)


def test_cluster_ip_compiles_to_socket_and_wire_frontends():
    ids = maps.SetIds()
    prog = maps.compile_port(sp(endpoints=(ep("10.99.0.3"), ep("10.99.0.2"), ep("10.99.0.4", ready=False))),
                             "n1", ["192.168.1.1"], ids)
    (set_id,) = prog.sets
    assert prog.sets[set_id] == (Backend("10.99.0.2", 8080), Backend("10.99.0.3", 8080))  # ready only, sorted
    assert prog.frontends == {
        FeKey("10.96.0.10", 80, 6, SCOPE_SOCK): FeVal(set_id, 2, 0, 0),
        FeKey("10.96.0.10", 80, 6, SCOPE_EXT): FeVal(set_id, 2, 0, FLAG_MASQ),  # off-cluster: masqueraded
    }
    assert prog.entries() == 2 + 2 * 2


def test_node_port_lb_and_external_ips_with_local_external_policy():
    ids = maps.SetIds()
    s = sp(protocol="UDP", node_port=30053, load_balancer_ips=("192.168.200.1",), external_ips=("1.2.3.4",),
           external_local=True, affinity_seconds=30,
           endpoints=(ep("10.99.0.2"), ep("10.99.1.2", node="n2")))
    prog = maps.compile_port(s, "n1", ["192.168.1.1", "10.99.0.1"], ids)
    cluster, local = ids.get(maps.owner(s, "cluster")), ids.get(maps.owner(s, "local"))
    assert prog.sets == {cluster: (Backend("10.99.0.2", 8080), Backend("10.99.1.2", 8080)),
                         local: (Backend("10.99.0.2", 8080),)}
    outside = [("192.168.1.1", 30053), ("10.99.0.1", 30053), ("192.168.200.1", 80), ("1.2.3.4", 80)]
    for ip, port in outside:
        # from pods: cluster-wide (kube-proxy's "pod traffic for external destinations")
        assert prog.frontends[FeKey(ip, port, 17, SCOPE_SOCK)] == FeVal(cluster, 2, 30, 0)
        # from outside: local endpoints only, client address kept (no masquerade flag)
        assert prog.frontends[FeKey(ip, port, 17, SCOPE_EXT)] == FeVal(local, 1, 30, 0)
    assert len(prog.frontends) == 2 + 2 * len(outside)


def test_cluster_external_policy_masquerades_and_internal_local_uses_local_endpoints():
    ids = maps.SetIds()
    s = sp(node_port=30080, internal_local=True, endpoints=(ep("10.99.1.2", node="n2"),))
    prog = maps.compile_port(s, "n1", ["192.168.1.1"], ids)
    cluster, local = ids.get(maps.owner(s, "cluster")), ids.get(maps.owner(s, "local"))
    assert prog.frontends[FeKey("10.96.0.10", 80, 6, SCOPE_SOCK)] == FeVal(local, 0, 0, 0)  # none local: refused
    assert prog.frontends[FeKey("192.168.1.1", 30080, 6, SCOPE_EXT)] == FeVal(cluster, 1, 0, FLAG_MASQ)


def test_terminating_endpoints_are_used_only_when_none_is_ready_and_unknown_protocols_are_skipped():
    ids = maps.SetIds()
    prog = maps.compile_port(sp(endpoints=(ep("10.99.0.2", ready=False, serving=True, terminating=True),)),
                             "n1", [], ids)
    assert list(prog.sets.values()) == [(Backend("10.99.0.2", 8080),)]
    assert maps.compile_port(sp(protocol="SCTP"), "n1", [], ids).frontends  # SCTP: the socket hooks handle it
    assert maps.compile_port(sp(protocol="ICMP"), "n1", [], ids).frontends == {}


def positions(ops: maps.Ops) -> dict[tuple[str, str, object], int]:
    return {(op, m, k): i for i, (op, m, k, _) in enumerate(ops.ordered())}


def test_growing_writes_slots_before_raising_the_count():
    ids = maps.SetIds()
    old = maps.compile_port(sp(endpoints=(ep("10.99.0.2"),)), "n1", [], ids)
    new = maps.compile_port(sp(endpoints=(ep("10.99.0.2"), ep("10.99.0.3"))), "n1", [], ids)
    ops = maps.plan([old], [new])
    (set_id,) = new.sets
    pos = positions(ops)
    fe = FeKey("10.96.0.10", 80, 6, SCOPE_SOCK)
    assert pos[("put", "members", MemberKey(set_id, "10.99.0.3", 8080))] < pos[("put", "slots", SlotKey(set_id, 1))]
    assert pos[("put", "slots", SlotKey(set_id, 1))] < pos[("put", "services", fe)]
    assert ("put", "slots", SlotKey(set_id, 0)) not in pos  # unchanged entries are not rewritten
    assert not ops.deletes


def test_shrinking_lowers_the_count_before_deleting_slots():
    ids = maps.SetIds()
    old = maps.compile_port(sp(endpoints=(ep("10.99.0.2"), ep("10.99.0.3"), ep("10.99.0.4"))), "n1", [], ids)
    new = maps.compile_port(sp(endpoints=(ep("10.99.0.3"),)), "n1", [], ids)
    ops = maps.plan([old], [new])
    (set_id,) = new.sets
    pos = positions(ops)
    fe = FeKey("10.96.0.10", 80, 6, SCOPE_SOCK)
    # slot 0 is rewritten in place (to a backend that stays), the count drops, then the rest goes
    assert pos[("put", "slots", SlotKey(set_id, 0))] < pos[("put", "services", fe)]
    assert pos[("put", "services", fe)] < pos[("del", "slots", SlotKey(set_id, 1))]
    assert pos[("put", "services", fe)] < pos[("del", "members", MemberKey(set_id, "10.99.0.2", 8080))]
    assert {k for m, k in ops.deletes if m == "slots"} == {SlotKey(set_id, 1), SlotKey(set_id, 2)}


def test_removing_a_service_deletes_frontends_first():
    ids = maps.SetIds()
    old = maps.compile_port(sp(endpoints=(ep("10.99.0.2"),)), "n1", [], ids)
    ops = maps.plan([old], [])
    assert [m for m, _ in ops.deletes] == ["services", "services", "slots", "members"]
    assert not ops.puts_sets and not ops.puts_frontends


def test_full_plan_rewrites_everything_and_deletes_what_nobody_owns():
    ids = maps.SetIds()
    prog = maps.compile_port(sp(endpoints=(ep("10.99.0.2"),)), "n1", [], ids)
    stray_fe = FeKey("10.96.9.9", 80, 6, SCOPE_SOCK)
    stray_slot = SlotKey(12345, 0)
    kernel = {"services": set(prog.frontends) | {stray_fe}, "slots": {stray_slot}, "members": set()}
    ops = maps.plan_full([prog], kernel)
    assert len(ops.puts_frontends) == len(prog.frontends)  # written again even though present
    assert len(ops.puts_sets) == 3  # a member of its set, of ANY_SET, and a slot
    assert ops.deletes == [("services", stray_fe), ("slots", stray_slot)]


def test_any_set_addresses_are_refcounted_across_service_ports():
    ids = maps.SetIds()
    a1 = maps.compile_port(sp(name="a", endpoints=(ep("10.99.0.2"), ep("10.99.0.3"))), "n1", [], ids)
    b1 = maps.compile_port(sp(name="b", endpoints=(ep("10.99.0.2"),)), "n1", [], ids)
    refs = maps.AddrRefs()
    assert refs.reset([a1, b1]) == {MemberKey(maps.ANY_SET, "10.99.0.2", 8080),
                                    MemberKey(maps.ANY_SET, "10.99.0.3", 8080)}
    a2 = maps.compile_port(sp(name="a", endpoints=(ep("10.99.0.4"),)), "n1", [], ids)
    added, removed = refs.change([(a1, a2)])
    # 10.99.0.2 is still b's backend: it stays; 10.99.0.3 was only a's
    assert added == {MemberKey(0, "10.99.0.4", 8080)} and removed == {MemberKey(0, "10.99.0.3", 8080)}
    added, removed = refs.change([(b1, None)])
    assert not added and removed == {MemberKey(0, "10.99.0.2", 8080)}
    ops = maps.plan([b1], [], (added, removed))
    assert ops.deletes[-1] == ("members", MemberKey(0, "10.99.0.2", 8080))


@pytest.mark.parametrize("struct,cls", [("fe6_key", maps.CFe6Key), ("backend6", maps.CBackend6),
                                        ("member6_key", maps.CMember6Key)])
def test_ipv6_ctypes_structs_mirror_the_c_source(struct, cls):
    body = re.search(rf"struct {struct} \{{(.*?)\}};", C_SOURCE, re.S).group(1)
    c = [(name, C_SIZES[typ] * int(n or 1)) for typ, name, n in re.findall(r"(__u\d+) (\w+)(?:\[(\d+)\])?;", body)]
    assert [(name, ct.sizeof(typ)) for name, typ in cls._fields_] == c
    assert ct.sizeof(cls) == sum(size for _, size in c)


def test_ipv6_addresses_are_packed_in_network_order_into_the_v6_maps():
    key = maps.pack_fe_key(FeKey("fd00:10:96::1", 8080, socket.IPPROTO_TCP, SCOPE_SOCK))
    assert isinstance(key, maps.CFe6Key)
    assert bytes(key) == socket.inet_pton(socket.AF_INET6, "fd00:10:96::1") + (8080).to_bytes(2, "big") + bytes([6, 0])
    assert maps.unpack_fe_key(key) == FeKey("fd00:10:96::1", 8080, 6, 0)
    assert maps.unpack_backend(maps.pack_backend(Backend("fd00:10:244:1::7", 53))) == Backend("fd00:10:244:1::7", 53)
    assert maps.unpack_member_key(maps.pack_member_key(MemberKey(7, "fd00::4", 443))) == MemberKey(7, "fd00::4", 443)
    assert maps.map_name("slots", 6) == "slots6" and maps.map_name("slots", 4) == "slots"
    assert set(maps.PACK) == set(maps.LAYOUT)
