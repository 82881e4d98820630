"""A partial sync's transaction written as nf_tables netlink messages, straight to the kernel.

Why not `nft -f` for partial syncs: before any transaction that adds a rule or an element, nft
(1.0.6 here; libnftables' cache is not kept between transactions either, since every commit
moves the ruleset generation) fetches the table's whole chain list to validate names, and the
kernel's chain dump restarts its walk for every batch it returns: at 10,000 services (~30,000
chains) that fetch alone cost ~1 s of a one-service change, against a few milliseconds for the
transaction itself. kproxy knows what it wrote, so it needs no cache: it encodes the operations
of `rules.partial_ops` itself and sends them as one batch (begin, messages, end), which the
kernel applies atomically, exactly as it applies nft's. Full syncs still go through `nft -f`
(rules.render_full), so nft remains the reference for the encoding; the integration test
applies the same changes both ways and compares `nft list table`.

The rule grammar is the small subset rules.render_service emits; anything else raises
Unsupported, and the caller falls back to `nft -f` for that transaction. Encodings follow what
nft 1.0.6 sends for the same text (seen with `nft --debug=netlink,mnl`): a CIDR on a byte
boundary is a shorter payload load, otherwise a 4-byte load and a mask; `tcp dport` is a
meta l4proto check and a transport-header load; integers in attributes are big-endian,
register contents in network order except numgen's and fib's results (host order). The IPv6
table (`ip6 kube-proxy`) differs only in the family of the messages, the address offsets and
lengths in the header (saddr at 8, daddr at 24, 16 bytes) and the set key type.

The kernel processes a batch synchronously within sendmsg(), so every error is already queued
on the socket when the call returns: no acknowledgements are requested, and the replies are
drained without waiting. The socket lives in the calling thread's network namespace (the node's).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shlex
import socket
import struct
from collections.abc import Iterable

from kproxy.nftables.rules import AFFINITY_PREFIX, SPECS, Op, maps_of

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x300, 0x400, 0x800
NLA_F_NESTED = 0x8000
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
NFPROTO = {4: NFPROTO_IPV4, 6: NFPROTO_IPV6}
# per family: (address length, saddr offset, daddr offset) in the network header
ADDRESS = {4: (4, 12, 16), 6: (16, 8, 24)}
# nf_tables message types
GETCHAIN, GETSET = 4, 10
NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, NEWSET, DELSET, NEWSETELEM, DELSETELEM = 3, 5, 6, 8, 9, 11, 12, 14
# verdicts
NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO = 0, 1, -3, -4
VERDICTS = {"drop": NF_DROP, "accept": NF_ACCEPT}
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
REG_VERDICT, REG_1, REG_2 = 0, 1, 2
RTN_LOCAL = 2
NFT_META_L4PROTO = 16
NFT_PAYLOAD_NETWORK, NFT_PAYLOAD_TRANSPORT = 1, 2
NFT_SET_TIMEOUT, NFT_SET_EVAL = 0x10, 0x20
TYPE_IPADDR, TYPE_IP6ADDR = 7, 8  # nft's ipv4_addr / ipv6_addr datatypes
ADDR_TYPES = {4: TYPE_IPADDR, 6: TYPE_IP6ADDR}
KEY_BYTEORDER_BIG = b"\x00\x04\x02\x00\x00\x00"  # set userdata: NFTNL_UDATA_SET_KEYBYTEORDER = big endian
SOCKET_BUFFER = 4 << 20


class Unsupported(ValueError):
    """A rule or element this encoder does not know: write the transaction with `nft -f`."""


class KernelError(RuntimeError):
    """The kernel refused the transaction (nothing of it was applied)."""


# --- attributes ------------------------------------------------------------------------------

def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">I", value))


def _i32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">i", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _value(kind: int, data: bytes) -> bytes:
    return _nest(kind, _attr(1, data))  # NFTA_DATA_VALUE


def _verdict(kind: int, code: int, chain: str | None = None) -> bytes:
    inner = _i32(1, code) + (_str(2, chain) if chain else b"")  # NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN
    return _nest(kind, _nest(2, inner))  # NFTA_DATA_VERDICT


def _comment(text: str) -> bytes:
    data = text.encode() + b"\0"
    if len(data) > 255:
        raise Unsupported("comment too long")
    return bytes([0, len(data)]) + data  # NFTNL_UDATA_*_COMMENT


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, _str(1, name), _nest(2, *attrs))  # NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }


# --- expressions -----------------------------------------------------------------------------

def _payload(base: int, offset: int, length: int, dreg: int = REG_1) -> bytes:
    return _expr("payload", _u32(1, dreg), _u32(2, base), _u32(3, offset), _u32(4, length))


def _cmp(data: bytes, op: int = 0, sreg: int = REG_1) -> bytes:
    return _expr("cmp", _u32(1, sreg), _u32(2, op), _value(3, data))


def _meta_l4proto() -> bytes:
    return _expr("meta", _u32(2, NFT_META_L4PROTO), _u32(1, REG_1))


def _immediate_verdict(code: int, chain: str | None) -> bytes:
    return _expr("immediate", _u32(1, REG_VERDICT), _verdict(2, code, chain))


def _address_match(field: str, value: str, negate: bool, family: int = 4) -> list[bytes]:
    """`ip|ip6 saddr|daddr [!=] ADDR[/PREFIX]` as nft encodes it."""
    size, saddr, daddr = ADDRESS[family]
    offset = saddr if field == "saddr" else daddr
    try:
        net = (ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network)(value, strict=False)
    except ValueError:
        raise Unsupported(f"address {value!r}") from None
    prefix = net.prefixlen
    op = 1 if negate else 0
    if prefix == 0:
        raise Unsupported("a /0 match")
    if prefix % 8 == 0:
        n = prefix // 8
        return [_payload(NFT_PAYLOAD_NETWORK, offset, n), _cmp(net.network_address.packed[:n], op)]
    return [_payload(NFT_PAYLOAD_NETWORK, offset, size),
            _expr("bitwise", _u32(1, REG_1), _u32(2, REG_1), _u32(3, size), _value(4, net.netmask.packed),
                  _value(5, bytes(size))),
            _cmp(net.network_address.packed, op)]


def _proto(name: str) -> int:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise Unsupported(f"protocol {name!r}") from None


def _port(text: str) -> bytes:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise Unsupported(f"port {text!r}")
    return struct.pack(">H", int(text))


def compile_rule(rule: str, set_ids: dict[str, int], family: int = 4) -> tuple[bytes, bytes | None]:
    """A rule of rules.render_service -> (NFTA_RULE_EXPRESSIONS payload, userdata or None).
    `set_ids`: sets created earlier in the same batch (name -> batch id); `family`: the table's."""
    l3 = SPECS[family].ip
    size, saddr, _ = ADDRESS[family]
    try:
        toks = shlex.split(rule)
    except ValueError:
        raise Unsupported(rule) from None
    exprs: list[bytes] = []
    comment = None
    i, n = 0, len(toks)

    def need(count: int) -> list[str]:
        if i + count > n:
            raise Unsupported(rule)
        return toks[i:i + count]

    while i < n:
        t = toks[i]
        if t == l3 and i + 1 < n and toks[i + 1] in ("saddr", "daddr"):
            field = toks[i + 1]
            negate = i + 2 < n and toks[i + 2] == "!="
            i += 3 if negate else 2
            (value,) = need(1)
            i += 1
            if value.startswith("@"):
                if negate or field != "saddr":
                    raise Unsupported(rule)
                name = value[1:]
                attrs = [_str(1, name), _u32(2, REG_1)] + ([_u32(4, set_ids[name])] if name in set_ids else [])
                exprs += [_payload(NFT_PAYLOAD_NETWORK, saddr, size), _expr("lookup", *attrs)]
            else:
                exprs += _address_match(field, value, negate, family)
        elif t in PROTOCOLS and i + 1 < n and toks[i + 1] == "dport":
            _, _, port = need(3)
            i += 3
            exprs += [_meta_l4proto(), _cmp(bytes([_proto(t)])),
                      _payload(NFT_PAYLOAD_TRANSPORT, 2, 2), _cmp(_port(port))]
        elif t == "meta" and i + 1 < n and toks[i + 1] == "l4proto":
            _, _, proto = need(3)
            i += 3
            exprs += [_meta_l4proto(), _cmp(bytes([_proto(proto)]))]
        elif t == "numgen":
            _, kind, mod, modulus, value = need(5)
            i += 5
            if kind != "random" or mod != "mod" or not modulus.isdigit() or not value.isdigit():
                raise Unsupported(rule)
            exprs += [_expr("numgen", _u32(1, REG_1), _u32(2, int(modulus)), _u32(3, 1)),
                      _cmp(struct.pack("=I", int(value)))]
        elif t == "fib":
            if need(4) != ["fib", "saddr", "type", "local"]:
                raise Unsupported(rule)
            i += 4
            exprs += [_expr("fib", _u32(1, REG_1), _u32(2, 3), _u32(3, 1)),  # ADDRTYPE of F_SADDR
                      _cmp(struct.pack("=I", RTN_LOCAL))]
        elif t in ("jump", "goto"):
            _, chain = need(2)
            i += 2
            exprs.append(_immediate_verdict(NFT_JUMP if t == "jump" else NFT_GOTO, chain))
        elif t == "update":
            _, target, *shape = need(6)
            i += 6
            if not target.startswith("@") or shape != ["{", l3, "saddr", "}"]:
                raise Unsupported(rule)
            name = target[1:]
            attrs = [_str(1, name), _u32(3, 1), _u32(4, REG_1)] + ([_u32(2, set_ids[name])] if name in set_ids else [])
            exprs += [_payload(NFT_PAYLOAD_NETWORK, saddr, size), _expr("dynset", *attrs)]
        elif t == "dnat":
            _, to, target = need(3)
            i += 3
            host, _, port = target.rpartition(":")
            if to != "to":
                raise Unsupported(rule)
            try:
                addr = socket.inet_pton(socket.AF_INET6, host[1:-1]) if family == 6 and host.startswith("[") \
                    else socket.inet_pton(socket.AF_INET, host)
            except OSError:
                raise Unsupported(rule) from None
            exprs += [_expr("immediate", _u32(1, REG_1), _value(2, addr)),
                      _expr("immediate", _u32(1, REG_2), _value(2, _port(port))),
                      _expr("nat", _u32(1, 1), _u32(2, NFPROTO[family]), _u32(3, REG_1), _u32(5, REG_2), _u32(7, 2))]
        elif t == "comment":
            _, comment = need(2)
            i += 2
        else:
            raise Unsupported(rule)
    return b"".join(exprs), (_comment(comment) if comment is not None else None)


# --- elements --------------------------------------------------------------------------------

_KEY_TYPES = {f: {name: spec[1].split(" : ")[0].split(" . ") for name, spec in maps_of(f).items()} for f in SPECS}


def _key(map_name: str, key: str, family: int = 4) -> bytes:
    """An element key (components joined by " . "), each component in a 4-byte-aligned register
    slot as nft lays out concatenations."""
    types = _KEY_TYPES[family].get(map_name)
    parts = key.split(" . ")
    if types is None or len(parts) != len(types):
        raise Unsupported(f"element {key!r} of {map_name}")
    out = b""
    for typ, part in zip(types, parts, strict=True):
        if typ in ("ipv4_addr", "ipv6_addr"):
            try:
                raw = socket.inet_pton(socket.AF_INET if typ == "ipv4_addr" else socket.AF_INET6, part)
            except OSError:
                raise Unsupported(f"element {key!r}") from None
        elif typ == "inet_proto":
            raw = bytes([_proto(part)])
        elif typ == "inet_service":
            raw = _port(part)
        else:
            raise Unsupported(f"key type {typ}")
        out += raw + b"\0" * (-len(raw) % 4)
    return out


def _element(map_name: str, key: str, value: str | None, family: int = 4) -> bytes:
    """NFTA_LIST_ELEM of one element; `value` as rules.Elements keeps it (' comment "x" : goto c')."""
    attrs = [_value(1, _key(map_name, key, family))]
    text = (value or "").strip()
    userdata = None
    if text.startswith("comment "):
        try:
            toks = shlex.split(text)
        except ValueError:
            raise Unsupported(text) from None
        userdata = _comment(toks[1])
        text = " ".join(toks[2:])
    if text.startswith(":"):
        verdict = text[1:].split()
        if len(verdict) == 2 and verdict[0] in ("goto", "jump"):
            attrs.append(_verdict(2, NFT_GOTO if verdict[0] == "goto" else NFT_JUMP, verdict[1]))
        elif len(verdict) == 1 and verdict[0] in VERDICTS:
            attrs.append(_verdict(2, VERDICTS[verdict[0]]))
        else:
            raise Unsupported(text)
    elif text:
        raise Unsupported(text)
    if userdata is not None:
        attrs.append(_attr(6, userdata))
    return _nest(1, *attrs)


# --- messages and the batch ------------------------------------------------------------------

class Batch:
    """The messages of one transaction, with the op each one came from (for error messages)."""

    def __init__(self, family: int = 4) -> None:
        self.parts: list[bytes] = []
        self.ops: list[Op | None] = []
        self.ip_family = family
        self.table = SPECS[family].table.split()[1]
        self.family = NFPROTO[family]

    def message(self, kind: int, flags: int, attrs: bytes, op: Op | None, family: int | None = None,
                res_id: int = 0) -> None:
        seq = len(self.parts)
        mtype = kind if kind in (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END) else (NFNL_SUBSYS_NFTABLES << 8) | kind
        body = struct.pack("=BBH", self.family if family is None else family, 0, socket.htons(res_id)) + attrs
        self.parts.append(struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | flags, seq, 0) + body)
        self.ops.append(op)

    def build(self, ops: Iterable[Op]) -> bytes:
        self.message(NFNL_MSG_BATCH_BEGIN, 0, b"", None, family=0, res_id=NFNL_SUBSYS_NFTABLES)
        table = _str(1, self.table)
        set_ids: dict[str, int] = {}
        for op in ops:
            kind = op[0]
            if kind == "add_chain":
                self.message(NEWCHAIN, NLM_F_CREATE, table + _str(3, op[1]), op)
            elif kind == "flush_chain":
                self.message(DELRULE, 0, table + _str(2, op[1]), op)
            elif kind == "delete_chain":
                self.message(DELCHAIN, 0, table + _str(3, op[1]), op)
            elif kind == "delete_set":
                self.message(DELSET, 0, table + _str(2, op[1]), op)
            elif kind == "add_set":
                name, timeout = op[1], op[2]
                if not name.startswith(AFFINITY_PREFIX):
                    raise Unsupported(f"set {name}")
                set_ids[name] = len(set_ids) + 1
                size = ADDRESS[self.ip_family][0]
                self.message(NEWSET, NLM_F_CREATE, table + _str(2, name) + _u32(3, NFT_SET_TIMEOUT | NFT_SET_EVAL)
                             + _u32(4, ADDR_TYPES[self.ip_family]) + _u32(5, size) + _u32(10, set_ids[name])
                             + _attr(11, struct.pack(">Q", int(timeout) * 1000)) + _attr(13, KEY_BYTEORDER_BIG), op)
            elif kind == "add_rule":
                exprs, userdata = compile_rule(op[2], set_ids, self.ip_family)
                attrs = table + _str(2, op[1]) + _attr(4 | NLA_F_NESTED, exprs)
                if userdata is not None:
                    attrs += _attr(7, userdata)
                self.message(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, attrs, op)
            elif kind in ("add_elements", "delete_elements"):
                adding = kind == "add_elements"
                items = op[2] if adding else [(k, None) for k in op[2]]
                elems = b"".join(_element(op[1], k, v, self.ip_family) for k, v in items)
                self.message(NEWSETELEM if adding else DELSETELEM, NLM_F_CREATE if adding else 0,
                             table + _str(2, op[1]) + _nest(3, elems), op)
            else:
                raise Unsupported(f"operation {kind}")
        self.message(NFNL_MSG_BATCH_END, 0, b"", None, family=0, res_id=NFNL_SUBSYS_NFTABLES)
        return b"".join(self.parts)


class Netlink:
    """One NETLINK_NETFILTER socket (made on first use, in the calling thread's namespace), writing
    `family`'s table."""

    def __init__(self, family: int = 4) -> None:
        self.family = family
        self.sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self.sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            s.bind((0, 0))
            self.sock = s
        return self.sock

    def apply(self, ops: list[Op]) -> int:
        """Send `ops` as one transaction; KernelError (nothing applied) when the kernel refuses it,
        Unsupported (nothing sent) when an op cannot be encoded. Returns the messages sent."""
        batch = Batch(self.family)
        data = batch.build(ops)
        s = self._socket()
        s.sendto(data, (0, 0))
        errors = []
        while True:
            try:
                reply = s.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(reply):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", reply, off)
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, off + 16)
                    if code:
                        op = batch.ops[seq] if 0 <= seq < len(batch.ops) else None
                        errors.append(f"{os.strerror(-code)} ({errno.errorcode.get(-code, code)}) in {op!r}")
                off += max(16, (length + 3) & ~3)
        if errors:
            raise KernelError("nf_tables refused the transaction: " + "; ".join(errors[:3]))
        return len(batch.parts)

    def _dump(self, kind: int, attrs: bytes) -> Iterable[dict[int, bytes]]:
        """A dump request; yields each reply's top-level attributes (type -> raw payload)."""
        s = self._socket()
        body = struct.pack("=BBH", NFPROTO[self.family], 0, 0) + attrs
        s.sendto(struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | kind,
                             NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body, (0, 0))
        while True:
            reply = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(reply):
                length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", reply, off)
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, off + 16)
                    if code:
                        raise KernelError(f"nf_tables dump: {os.strerror(-code)}")
                    return
                found, pos, end = {}, off + 20, off + length
                while pos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", reply, pos)
                    found[atype & ~NLA_F_NESTED] = reply[pos + 4:pos + alen]
                    pos += (alen + 3) & ~3
                yield found
                off += (length + 3) & ~3

    def objects(self) -> tuple[set[str], dict[str, int | None]]:
        """Our table's chain names, and its sets with their timeouts in seconds (empty when the
        table is absent) — what `nft -j list chains/sets` tells, without nft and its JSON."""
        table = SPECS[self.family].table.split()[1]
        name = table.encode() + b"\0"
        chains = {a[3].rstrip(b"\0").decode() for a in self._dump(GETCHAIN, _str(1, table))
                  if a.get(1) == name and 3 in a}
        sets: dict[str, int | None] = {}
        try:
            for a in self._dump(GETSET, _str(1, table)):
                if a.get(1) == name and 2 in a:
                    timeout = struct.unpack(">Q", a[11])[0] // 1000 if 11 in a else None
                    sets[a[2].rstrip(b"\0").decode()] = timeout
        except KernelError:
            pass  # no table: no sets
        return chains, sets

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
