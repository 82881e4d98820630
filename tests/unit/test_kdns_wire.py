"""kdns wire format: strict parsing of garbage, responses decoded by an independent parser (dnslib),
compression, EDNS, truncation decisions."""

from __future__ import annotations

import contextlib
import random
import struct

import dnslib
import pytest

from kdns import wire
from kdns.wire import FORMERR, SRV, A, FormError, Reply, build, error_response, parse_query
from knet_testing.kdns import query

Z = "cluster.local"


def test_parse_plain_and_edns_query():
    q = parse_query(query("Web.Default.svc.cluster.local", A, qid=77, edns=4096, do=True))
    assert (q.id, q.qname, q.qtype, q.qclass) == (77, "web.default.svc.cluster.local", A, 1)
    assert q.qname_wire == b"\x03Web\x07Default\x03svc\x07cluster\x05local\x00"  # case kept for the echo
    assert q.edns and q.udp_size == 4096 and q.do and q.udp_limit == wire.OUR_UDP_SIZE
    q = parse_query(query("x", A, edns=None))
    assert not q.edns and q.udp_limit == 512
    assert parse_query(query("x", A, edns=100)).udp_limit == 512  # below 512 means 512


def _header(qd=1, an=0, ns=0, ar=0, flags=0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, qd, an, ns, ar)


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\x12\x34\x01", "short header"),
    (_header(), "no question"),
    (_header(qd=0), "zero questions"),
    (_header(qd=2) + b"\x01a\x00\x00\x01\x00\x01" * 2, "two questions"),
    (_header() + b"\x3fabc", "label past the end"),
    (_header() + b"\x01a\x00\x00", "truncated qtype"),
    (_header() + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", "label type 01"),
    (_header() + b"\x81a\x00\x00\x01\x00\x01", "label type 10"),
    (_header() + b"\xc0\x0c\x00\x01\x00\x01", "pointer to itself"),
    (_header() + b"\x01a\xc0\x0e\x00\x01\x00\x01", "forward pointer"),
    (_header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "pointer back into its own name (a loop)"),
    (_header() + b"\xc0", "truncated pointer"),
    (_header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "name over 255"),
    (_header(flags=0x8100) + b"\x01a\x00\x00\x01\x00\x01", "a response"),
    (_header(ar=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10", "truncated OPT"),
    (_header(ar=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x09", "rdlen past end"),
    (_header(ar=2) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00" * 2, "two OPTs"),
    (_header(ar=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x03\x00\x0a\x00",
     "option past the record"),
])
def test_garbage_is_a_form_error(data, why):
    with pytest.raises(FormError):
        parse_query(data)


def test_compression_chain_backwards_is_fine_but_bounded():
    # A question whose name is a pointer into an earlier additional-looking blob is not possible
    # (the question comes first), so test read_name directly: a chain of backward pointers.
    data = bytearray(b"\x01a\x00")
    for i in range(1, 80):
        data += bytes((0xC0, (i - 1) * 2 + (1 if i == 1 else 0)))  # each points at the previous pointer
    # hop limit: a long chain is refused rather than walked
    with pytest.raises(FormError):
        wire.read_name(bytes(data), len(data) - 2)
    assert wire.read_name(b"\x01a\x00\xc0\x00", 3) == ([b"a"], 5)


def test_error_response_keeps_id_opcode_rd():
    resp = error_response(_header() + b"\x3fabc", FORMERR)
    rec = dnslib.DNSRecord.parse(resp)
    assert rec.header.id == 0xBEEF and rec.header.rcode == FORMERR and rec.header.qr and rec.header.rd
    assert error_response(b"\x01\x02", FORMERR) is None  # no header: drop
    assert error_response(_header(flags=0x8000) + b"\x00", FORMERR) is None  # never answer a response


def _reply(n: int) -> Reply:
    fqdn = f"big.default.svc.{Z}"
    return Reply(answer=[(fqdn, A, 5, bytes((10, 244, i // 256, i % 256))) for i in range(n)], aa=True)


def test_response_decodes_with_dnslib_and_compresses():
    q = parse_query(query("Big.Default.svc.cluster.local", A))
    data, tc = build(q, _reply(3), q.udp_limit)
    rec = dnslib.DNSRecord.parse(data)
    assert not tc and rec.header.aa and rec.header.qr and rec.header.rd and not rec.header.ra
    assert str(rec.q.qname) == "Big.Default.svc.cluster.local."  # echoed exactly
    assert [str(rr.rdata) for rr in rec.rr] == ["10.244.0.0", "10.244.0.1", "10.244.0.2"]
    assert len(data) < 12 + 35 + 3 * 16 + 11 + 2  # owner names are 2-byte pointers


def test_srv_target_not_compressed_but_decodable():
    q = parse_query(query(f"_http._tcp.web.default.svc.{Z}", SRV))
    target = f"web.default.svc.{Z}"
    reply = Reply(answer=[(q.qname, SRV, 5, (0, 100, 80, target))],
                  additional=[(target, A, 5, bytes((10, 96, 0, 20)))], aa=True)
    rec = dnslib.DNSRecord.parse(build(q, reply, 512)[0])
    assert str(rec.rr[0].rdata.target) == target + "." and rec.rr[0].rdata.port == 80
    assert str(rec.ar[0].rname) == target + "." and str(rec.ar[0].rdata) == "10.96.0.20"
    assert rec.ar[-1].rtype == wire.OPT  # OPT echoed because the query had one


def test_truncation_decisions():
    q = parse_query(query(f"big.default.svc.{Z}", A, edns=None))  # 512-byte limit
    data, tc = build(q, _reply(25), q.udp_limit)  # 25 answers * 16 + header + question fits
    assert not tc and len(data) <= 512
    data, tc = build(q, _reply(40), q.udp_limit)
    rec = dnslib.DNSRecord.parse(data)
    # As CoreDNS truncates: the answers that fit, TC set (the client retries over TCP).
    assert tc and rec.header.tc and 25 <= len(rec.rr) < 40 and len(rec.questions) == 1 and len(data) <= 512
    full, tc = build(q, _reply(40), None)  # TCP: everything
    assert not tc and len(dnslib.DNSRecord.parse(full).rr) == 40
    q = parse_query(query(f"big.default.svc.{Z}", A, edns=4096))  # EDNS: up to our 1232
    assert not build(q, _reply(70), q.udp_limit)[1]
    assert build(q, _reply(80), q.udp_limit)[1]


def test_additional_records_dropped_before_truncating():
    q = parse_query(query(f"_http._tcp.big.default.svc.{Z}", SRV, edns=None))
    targets = [f"pod-{i}.big.default.svc.{Z}" for i in range(7)]
    reply = Reply(answer=[(q.qname, SRV, 5, (0, 10, 80, t)) for t in targets],
                  additional=[(t, A, 5, bytes((10, 0, 0, i))) for i, t in enumerate(targets)])
    data, tc = build(q, reply, 512)
    rec = dnslib.DNSRecord.parse(data)
    assert not tc and len(rec.rr) == 7 and 0 < len(rec.ar) < 7 and len(data) <= 512


def test_badvers_goes_into_the_opt_record():
    q = parse_query(query("x", A))
    rec = dnslib.DNSRecord.parse(build(q, Reply(wire.BADVERS), 512)[0])
    assert rec.header.rcode == 0 and (rec.ar[0].ttl >> 24) == 1  # 16 = 1 << 4 in the extended bits


def test_random_bytes_never_raise_anything_but_form_error():
    rnd = random.Random(7)
    good = query(f"web.default.svc.{Z}", SRV)
    for i in range(20000):
        if i % 2:
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80)))
        else:  # mutate a valid query: flips, cuts, splices
            b = bytearray(good)
            for _ in range(rnd.randrange(1, 6)):
                b[rnd.randrange(len(b))] = rnd.getrandbits(8)
            data = bytes(b[:rnd.randrange(len(b) + 1)])
        with contextlib.suppress(FormError):
            parse_query(data)
