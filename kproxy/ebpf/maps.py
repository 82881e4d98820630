"""What the ebpf data path's maps must hold, and in which order to change them (pure: no bcc).

A service port compiles into *frontends* (address, port, protocol, scope -> backend set, count,
affinity, flags) and *backend sets* (slot i -> backend, plus a membership set). Sets are private
to one service port, keyed by a stable id derived from the service port and the endpoint kind
("cluster" or "local"), so ids survive restarts and a partial sync touches only its own keys.

Update order (`plan`) never lets a program see a half-written service:
  1. members, then backend slots, that are new or changed (a slot below the old count is rewritten
     in place: every read of it sees either the old or the new backend, both usable);
  2. frontends: new ones, and count changes (raising a count only after its slots exist,
     lowering it before they go);
  3. deletions: frontends nobody owns, then slots beyond the new counts and old members.

The C structs in kproxy.c are mirrored by the ctypes structures here; `pack_*` / `unpack_*`
convert between readable tuples and them. Addresses and ports are stored in network byte order,
as the BPF hooks see them.

IPv6 (the second family's backend): the same readable tuples and the same plans, written to the
maps of the same names with a "6" (services6, slots6, members6: `map_name`), whose structs hold
128-bit addresses; the packers take the family from the address.
"""

from __future__ import annotations

import ctypes as ct
import hashlib
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from kproxy.model import Endpoint, ServicePort, categorize

SCOPE_SOCK, SCOPE_EXT = 0, 1
# members entries under this set id: "some service has this backend address" (refcounted here).
# The tc program uses it to tell a backend's reply to masqueraded traffic (which may be addressed
# to a node port number: MASQUERADE --random-fully picks any port) from a new client.
ANY_SET = 0
FLAG_MASQ = 1
PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}

# Capacity: 10,000 service ports with a cluster IP, node ports on two node addresses and an
# LB/external IP, each in two scopes (~8 frontends each); ~25 endpoints per service on average.
FE_MAX = 131072
SLOT_MAX = 262144
AFF_MAX = 65536
SOCK_MAX = 65536
CT_MAX = 131072


# -- readable keys and values -------------------------------------------------------------
class FeKey(NamedTuple):
    ip: str
    port: int
    proto: int
    scope: int


class FeVal(NamedTuple):
    set_id: int
    count: int
    affinity: int
    flags: int


class SlotKey(NamedTuple):
    set_id: int
    slot: int


class Backend(NamedTuple):
    ip: str
    port: int


class MemberKey(NamedTuple):
    set_id: int
    ip: str
    port: int


# -- the C structs ------------------------------------------------------------------------
class CFeKey(ct.Structure):
    _fields_ = [("ip", ct.c_uint32), ("port", ct.c_uint16), ("proto", ct.c_uint8), ("scope", ct.c_uint8)]


class CFeVal(ct.Structure):
    _fields_ = [("set", ct.c_uint32), ("count", ct.c_uint32), ("affinity", ct.c_uint32), ("flags", ct.c_uint32)]


class CSlotKey(ct.Structure):
    _fields_ = [("set", ct.c_uint32), ("slot", ct.c_uint32)]


class CBackend(ct.Structure):
    _fields_ = [("ip", ct.c_uint32), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class CMemberKey(ct.Structure):
    _fields_ = [("set", ct.c_uint32), ("ip", ct.c_uint32), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class CMember(ct.Structure):
    _fields_ = [("present", ct.c_uint8)]


class CCtKey(ct.Structure):
    _fields_ = [("saddr", ct.c_uint32), ("daddr", ct.c_uint32), ("sport", ct.c_uint16), ("dport", ct.c_uint16),
                ("proto", ct.c_uint8), ("dir", ct.c_uint8), ("pad", ct.c_uint16)]


class CFe6Key(ct.Structure):
    _fields_ = [("ip", ct.c_uint32 * 4), ("port", ct.c_uint16), ("proto", ct.c_uint8), ("scope", ct.c_uint8)]


class CBackend6(ct.Structure):
    _fields_ = [("ip", ct.c_uint32 * 4), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class CMember6Key(ct.Structure):
    _fields_ = [("set", ct.c_uint32), ("ip", ct.c_uint32 * 4), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


# map name -> (key struct, value struct); the loader checks bcc's sizes against these.
LAYOUT: dict[str, tuple[type[ct.Structure], type[ct.Structure]]] = {
    "services": (CFeKey, CFeVal),
    "slots": (CSlotKey, CBackend),
    "members": (CMemberKey, CMember),
    "services6": (CFe6Key, CFeVal),
    "slots6": (CSlotKey, CBackend6),
    "members6": (CMember6Key, CMember),
}
DAEMON_MAPS = ("services", "slots", "members")  # the maps the daemon writes (per family: map_name)


def map_name(name: str, family: int) -> str:
    """The map of `family` holding what `name` holds for IPv4 ("services" -> "services6")."""
    return name + "6" if family == 6 else name


def ip6_words(ip: str) -> ct.Array:
    """The four u32 whose in-memory bytes are the IPv6 address in network order (as `user_ip6`)."""
    return (ct.c_uint32 * 4).from_buffer_copy(socket.inet_pton(socket.AF_INET6, ip))


def words_ip6(words: ct.Array) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes(words))


def ip_u32(ip: str) -> int:
    """The u32 whose in-memory bytes are the address in network order (as `user_ip4`)."""
    return int.from_bytes(socket.inet_aton(ip), sys.byteorder)


def u32_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, sys.byteorder))


def port_u16(port: int) -> int:
    """The u16 whose in-memory bytes are the port in network order."""
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def u16_port(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


def _addr(ip: str) -> int | ct.Array:
    """An address as its struct field holds it: a u32 (IPv4) or four u32 (IPv6)."""
    return ip6_words(ip) if ":" in ip else ip_u32(ip)


def _ip(field: int | ct.Array) -> str:
    return u32_ip(field) if isinstance(field, int) else words_ip6(field)


def pack_fe_key(k: FeKey) -> CFeKey | CFe6Key:
    return (CFe6Key if ":" in k.ip else CFeKey)(_addr(k.ip), port_u16(k.port), k.proto, k.scope)


def unpack_fe_key(c: CFeKey | CFe6Key) -> FeKey:
    return FeKey(_ip(c.ip), u16_port(c.port), c.proto, c.scope)


def pack_fe_val(v: FeVal) -> CFeVal:
    return CFeVal(v.set_id, v.count, v.affinity, v.flags)


def unpack_fe_val(c: CFeVal) -> FeVal:
    return FeVal(c.set, c.count, c.affinity, c.flags)


def pack_slot_key(k: SlotKey) -> CSlotKey:
    return CSlotKey(k.set_id, k.slot)


def unpack_slot_key(c: CSlotKey) -> SlotKey:
    return SlotKey(c.set, c.slot)


def pack_backend(b: Backend) -> CBackend | CBackend6:
    return (CBackend6 if ":" in b.ip else CBackend)(_addr(b.ip), port_u16(b.port), 0)


def unpack_backend(c: CBackend | CBackend6) -> Backend:
    return Backend(_ip(c.ip), u16_port(c.port))


def pack_member_key(k: MemberKey) -> CMemberKey | CMember6Key:
    return (CMember6Key if ":" in k.ip else CMemberKey)(k.set_id, _addr(k.ip), port_u16(k.port), 0)


def unpack_member_key(c: CMemberKey | CMember6Key) -> MemberKey:
    return MemberKey(c.set, _ip(c.ip), u16_port(c.port))


# Per map: (key packer, value packer); the IPv6 maps take the same packers (the address decides).
_PACK = {"services": (pack_fe_key, pack_fe_val), "slots": (pack_slot_key, pack_backend),
         "members": (pack_member_key, lambda _v: CMember(1))}
_UNPACK = {"services": (unpack_fe_key, unpack_fe_val), "slots": (unpack_slot_key, unpack_backend),
           "members": (unpack_member_key, lambda _c: True)}
PACK = {**_PACK, **{map_name(k, 6): v for k, v in _PACK.items()}}
UNPACK = {**_UNPACK, **{map_name(k, 6): v for k, v in _UNPACK.items()}}


# -- compiling service ports ----------------------------------------------------------------
class SetIds:
    """Stable backend-set ids: a hash of the owner string (so a restarted daemon derives the same
    ids), probed linearly on the rare collision. 0 is never used, ids fit in 31 bits."""

    def __init__(self) -> None:
        self.by_owner: dict[str, int] = {}
        self.owner_of: dict[int, str] = {}

    def get(self, owner: str) -> int:
        if owner in self.by_owner:
            return self.by_owner[owner]
        i = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big") & 0x7FFFFFFF
        while i == 0 or i in self.owner_of:
            i = (i + 1) & 0x7FFFFFFF
        self.by_owner[owner], self.owner_of[i] = i, owner
        return i

    def release(self, owner: str) -> None:
        i = self.by_owner.pop(owner, None)
        if i is not None:
            self.owner_of.pop(i, None)

    def owners_with_prefix(self, prefix: str) -> list[str]:
        return [o for o in self.by_owner if o.startswith(prefix)]


@dataclass
class Program:
    """One service port's map entries."""
    frontends: dict[FeKey, FeVal] = field(default_factory=dict)
    sets: dict[int, tuple[Backend, ...]] = field(default_factory=dict)

    def slots(self) -> dict[SlotKey, Backend]:
        return {SlotKey(s, i): b for s, bs in self.sets.items() for i, b in enumerate(bs)}

    def members(self) -> set[MemberKey]:
        return {MemberKey(s, b.ip, b.port) for s, bs in self.sets.items() for b in bs}

    def addrs(self) -> set[MemberKey]:
        return {MemberKey(ANY_SET, b.ip, b.port) for bs in self.sets.values() for b in bs}

    def entries(self) -> int:
        return len(self.frontends) + 2 * sum(len(bs) for bs in self.sets.values())


class AddrRefs:
    """How many service ports use each backend address (the ANY_SET members entries)."""

    def __init__(self) -> None:
        self.count: dict[MemberKey, int] = {}

    def reset(self, progs: Iterable[Program]) -> set[MemberKey]:
        self.count = {}
        for p in progs:
            for a in p.addrs():
                self.count[a] = self.count.get(a, 0) + 1
        return set(self.count)

    def change(self, pairs: Iterable[tuple[Program | None, Program | None]]) -> tuple[set[MemberKey], set[MemberKey]]:
        """Apply (old, new) program replacements; returns the addresses that appeared and vanished."""
        pairs = list(pairs)
        touched = {a for old, new in pairs for p in (old, new) if p is not None for a in p.addrs()}
        before = {a for a in touched if self.count.get(a)}
        for old, new in pairs:
            for a in old.addrs() if old is not None else ():
                self.count[a] -= 1
                if not self.count[a]:
                    del self.count[a]
            for a in new.addrs() if new is not None else ():
                self.count[a] = self.count.get(a, 0) + 1
        after = {a for a in touched if self.count.get(a)}
        return after - before, before - after


def owner(sp: ServicePort, kind: str) -> str:
    return f"{sp.key}/{sp.proto}/{kind}"


def _backends(eps: Iterable[Endpoint]) -> tuple[Backend, ...]:
    return tuple(sorted({Backend(e.ip, e.port) for e in eps}, key=lambda b: (_packed(b.ip), b.port)))


def _packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, ip) if ":" in ip else socket.inet_aton(ip)


def compile_port(sp: ServicePort, node_name: str, node_ips: Iterable[str], ids: SetIds) -> Program:
    """The frontends and backend sets of one service port, with kube-proxy's semantics:

    - cluster IPs from pods (socket hooks): internal policy endpoints (Local: this node's);
    - node ports on this node's addresses, LB and external IPs from pods (socket hooks):
      cluster-wide endpoints (kube-proxy sends pod traffic to external destinations cluster-wide
      even under externalTrafficPolicy: Local);
    - the same destinations arriving on an external interface (tc): external policy endpoints,
      masqueraded under Cluster, client address kept under Local;
    - cluster IPs arriving on an external interface (off-cluster clients routed to the node):
      internal policy endpoints, masqueraded (kube-proxy's `! -s clusterCIDR -j KUBE-MARK-MASQ`).
    """
    prog = Program()
    proto = PROTOCOLS.get(sp.protocol)
    if proto is None:
        return prog
    cats = categorize(sp, node_name)
    cluster, local = _backends(cats.cluster), _backends(cats.local)
    affinity = sp.affinity_seconds or 0

    def use(kind: str) -> tuple[int, int]:
        backends = local if kind == "local" else cluster
        set_id = ids.get(owner(sp, kind))
        prog.sets[set_id] = backends
        return set_id, len(backends)

    internal = use("local" if sp.internal_local else "cluster")
    for ip in sp.cluster_ips:
        prog.frontends[FeKey(ip, sp.port, proto, SCOPE_SOCK)] = FeVal(*internal, affinity, 0)
        prog.frontends[FeKey(ip, sp.port, proto, SCOPE_EXT)] = FeVal(*internal, affinity, FLAG_MASQ)
    outside = [(ip, sp.port) for ip in (*sp.external_ips, *sp.load_balancer_ips)]
    if sp.node_port:
        outside += [(ip, sp.node_port) for ip in node_ips]
    if outside:
        from_pods = use("cluster")
        external = use("local" if sp.external_local else "cluster")
        ext_flags = 0 if sp.external_local else FLAG_MASQ
        for ip, port in outside:
            prog.frontends[FeKey(ip, port, proto, SCOPE_SOCK)] = FeVal(*from_pods, affinity, 0)
            prog.frontends[FeKey(ip, port, proto, SCOPE_EXT)] = FeVal(*external, affinity, ext_flags)
    return prog


# -- ordering changes -----------------------------------------------------------------------
@dataclass
class Ops:
    """Map writes in the order they must be applied: each list is (map name, key, value)."""
    puts_sets: list[tuple[str, object, object]] = field(default_factory=list)
    puts_frontends: list[tuple[str, object, object]] = field(default_factory=list)
    deletes: list[tuple[str, object]] = field(default_factory=list)

    def ordered(self) -> list[tuple[str, str, object, object]]:
        """("put"|"del", map, key, value) in application order."""
        return ([("put", m, k, v) for m, k, v in self.puts_sets]
                + [("put", m, k, v) for m, k, v in self.puts_frontends]
                + [("del", m, k, None) for m, k in self.deletes])

    def __len__(self) -> int:
        return len(self.puts_sets) + len(self.puts_frontends) + len(self.deletes)


def _merge(progs: Iterable[Program]) -> tuple[dict[FeKey, FeVal], dict[SlotKey, Backend], set[MemberKey]]:
    fe: dict[FeKey, FeVal] = {}
    slots: dict[SlotKey, Backend] = {}
    members: set[MemberKey] = set()
    for p in progs:
        fe.update(p.frontends)
        slots.update(p.slots())
        members |= p.members()
    return fe, slots, members


def plan(old: Iterable[Program], new: Iterable[Program],
         addrs: tuple[set[MemberKey], set[MemberKey]] = (set(), set())) -> Ops:
    """The writes turning the entries of `old` programs into those of `new` (a partial sync:
    only the changed service ports' programs are passed); `addrs`: ANY_SET entries to add and
    remove (AddrRefs.change)."""
    old_fe, old_slots, old_members = _merge(old)
    new_fe, new_slots, new_members = _merge(new)
    ops = Ops()
    # Members first: a backend is a member before any slot can hand it out.
    ops.puts_sets += [("members", k, True) for k in sorted(addrs[0])]
    ops.puts_sets += [("members", k, True) for k in sorted(new_members - old_members)]
    ops.puts_sets += [("slots", k, v) for k, v in sorted(new_slots.items()) if old_slots.get(k) != v]
    ops.puts_frontends += [("services", k, v) for k, v in sorted(new_fe.items()) if old_fe.get(k) != v]
    ops.deletes += [("services", k) for k in sorted(old_fe.keys() - new_fe.keys())]
    ops.deletes += [("slots", k) for k in sorted(old_slots.keys() - new_slots.keys())]
    ops.deletes += [("members", k) for k in sorted(old_members - new_members)]
    ops.deletes += [("members", k) for k in sorted(addrs[1])]
    return ops


def plan_full(progs: Iterable[Program], kernel: dict[str, set]) -> Ops:
    """A full sync: every wanted entry written again, then every kernel key nobody wants deleted
    (`kernel`: map name -> the keys found in it), which repairs any tampering."""
    progs = list(progs)
    fe, slots, members = _merge(progs)
    members |= {a for p in progs for a in p.addrs()}
    ops = Ops()
    # In the programs' order, not sorted: sorting 40,000 named tuples at 10,000 services cost more
    # than writing them, and only the order of the groups (sets, then frontends) matters.
    ops.puts_sets += [("members", k, True) for k in members]
    ops.puts_sets += [("slots", k, v) for k, v in slots.items()]
    ops.puts_frontends += [("services", k, v) for k, v in fe.items()]
    ops.deletes += [("services", k) for k in sorted(kernel.get("services", set()) - fe.keys())]
    ops.deletes += [("slots", k) for k in sorted(kernel.get("slots", set()) - slots.keys())]
    ops.deletes += [("members", k) for k in sorted(kernel.get("members", set()) - members)]
    return ops
