"""Upstream replies as bytes: what `scan` keeps (TTLs, RFC 2308 negative TTLs, the OPT record)
and what each client gets from `render` (its ID and spelling, aged TTLs, its EDNS, truncation to
its buffer), checked with an independent parser (dnslib)."""

from __future__ import annotations

import struct

import dnslib
import pytest

from kdns import message, wire
from kdns.wire import FormError

QUESTION = wire.name_to_wire("www.example.com") + struct.pack("!HH", wire.A, wire.IN)


def reply(rcode: int = 0, answers: tuple[str, ...] = (), soa_ttl: int | None = None, tc: bool = False,
          edns: bool = True, additional: tuple[str, ...] = (), qname: str = "www.example.com") -> bytes:
    rec = dnslib.DNSRecord(dnslib.DNSHeader(id=99, qr=1, ra=1, rd=1, rcode=rcode, tc=int(tc)),
                           q=dnslib.DNSQuestion(qname, dnslib.QTYPE.A))
    for rr in answers:
        rec.add_answer(*dnslib.RR.fromZone(rr))
    if soa_ttl is not None:
        rec.add_auth(*dnslib.RR.fromZone(f"example.com. {soa_ttl} IN SOA ns.example.com. root.example.com. 1 2 3 4 30"))
    for rr in additional:
        rec.add_ar(*dnslib.RR.fromZone(rr))
    if edns:
        rec.add_ar(dnslib.EDNS0(udp_len=4096, flags="do"))
    return rec.pack()  # dnslib compresses names, as real servers do


def client_copy(a: message.Answer, *, spelled: str = "WWW.Example.com", edns: bool = True, limit: int | None = 1232,
                age: int = 0, fixed: int | None = None, qid: int = 0x4242) -> tuple[dnslib.DNSRecord, bool, bytes]:
    question = wire.name_to_wire(spelled) + struct.pack("!HH", wire.A, wire.IN)
    data, truncated = message.render(a, qid.to_bytes(2, "big"), question, wire.RD, edns, False, limit, age, fixed)
    return dnslib.DNSRecord.parse(data), truncated, data


def test_positive_answer_cached_for_its_smallest_ttl():
    a = message.scan(reply(answers=("www.example.com. 300 IN CNAME web.example.com.",
                                    "web.example.com. 60 IN A 192.0.2.1")), QUESTION)
    assert a.rcode == wire.NOERROR and a.ttl == 60 and not a.denial and a.an == 2
    assert [int.from_bytes(a.data[off:off + 4], "big") for off in a.ttls] == [300, 60]


def test_negative_answers_cached_for_the_soa_minimum():
    nx = message.scan(reply(rcode=3, soa_ttl=600), QUESTION)
    assert nx.denial and nx.ttl == 30  # min(SOA TTL 600, MINIMUM 30): RFC 2308 §5
    nodata = message.scan(reply(soa_ttl=20), QUESTION)
    assert nodata.denial and nodata.rcode == wire.NOERROR and nodata.ttl == 20
    assert message.scan(reply(rcode=3), QUESTION).ttl == -1  # no SOA: not cached
    assert message.scan(reply(rcode=2), QUESTION).ttl == -1  # failures never


def test_scan_rejects_garbage_and_other_questions():
    good = reply(answers=("www.example.com. 5 IN A 1.2.3.4",))
    other = wire.name_to_wire("www.example.org") + struct.pack("!HH", wire.A, wire.IN)
    for bad, question in ((b"", QUESTION), (b"\x00" * 11, QUESTION), (good[:20], QUESTION),
                          (good[:-14], QUESTION), (good, other)):
        with pytest.raises(FormError):
            message.scan(bad, question)
    query = bytearray(good)
    query[2] &= 0x7F  # QR clear: a query, not a reply
    with pytest.raises(FormError):
        message.scan(bytes(query), QUESTION)


def test_client_copy_has_its_id_spelling_and_aged_ttls():
    a = message.scan(reply(answers=("www.example.com. 300 IN A 192.0.2.1",), soa_ttl=None), QUESTION)
    rec, truncated, _ = client_copy(a, age=100)
    assert rec.header.id == 0x4242 and rec.header.rd and not truncated
    assert str(rec.q.qname) == "WWW.Example.com."  # 0x20 spelling echoed
    assert [(str(rr.rdata), rr.ttl) for rr in rec.rr] == [("192.0.2.1", 200)]
    rec, _, _ = client_copy(a, age=400)
    assert rec.rr[0].ttl == 0  # never negative
    rec, _, _ = client_copy(a, fixed=30)  # a stale answer: RFC 8767's short TTL
    assert rec.rr[0].ttl == 30


def test_edns_follows_the_client():
    a = message.scan(reply(answers=("www.example.com. 60 IN A 192.0.2.1",)), QUESTION)
    rec, _, _ = client_copy(a, edns=True)
    opts = [rr for rr in rec.ar if rr.rtype == wire.OPT]
    assert len(opts) == 1 and opts[0].rclass == wire.OUR_UDP_SIZE  # ours, not the upstream's 4096
    rec, _, _ = client_copy(a, edns=False)
    assert not [rr for rr in rec.ar if rr.rtype == wire.OPT]  # no OPT for a client that sent none
    # An upstream without EDNS: the EDNS client still gets an OPT back.
    plain = message.scan(reply(answers=("www.example.com. 60 IN A 192.0.2.1",), edns=False), QUESTION)
    rec, _, _ = client_copy(plain, edns=True)
    assert [rr.rtype for rr in rec.ar] == [wire.OPT]


def test_truncation_to_the_clients_buffer():
    answers = tuple(f"www.example.com. 60 IN A 198.51.100.{i}" for i in range(1, 101))
    a = message.scan(reply(answers=answers), QUESTION)
    rec, truncated, data = client_copy(a, edns=False, limit=512)
    assert truncated and rec.header.tc and len(data) <= 512 and 0 < len(rec.rr) < 100
    rec, truncated, data = client_copy(a, edns=True, limit=1232)
    assert truncated and rec.header.tc and len(data) <= 1232 and rec.ar[-1].rtype == wire.OPT
    rec, truncated, _ = client_copy(a, limit=None)  # TCP: all of it
    assert not truncated and not rec.header.tc and len(rec.rr) == 100


def test_additional_records_dropped_without_tc():
    extra = tuple(f"ns{i}.example.com. 60 IN A 192.0.2.{i}" for i in range(1, 60))
    a = message.scan(reply(answers=("www.example.com. 60 IN A 192.0.2.1",), additional=extra), QUESTION)
    rec, truncated, data = client_copy(a, edns=False, limit=512)
    assert not truncated and not rec.header.tc and len(rec.rr) == 1 and 0 < len(rec.ar) < 59 and len(data) <= 512


def test_records_expand_compressed_names():
    a = message.scan(reply(answers=("www.example.com. 300 IN CNAME web.example.com.",
                                    "web.example.com. 60 IN A 192.0.2.1"), soa_ttl=50), QUESTION)
    an, ns, _ = message.records(a, age=10)
    assert an[0][0] == wire.name_to_wire("www.example.com") and an[0][2] == 290
    assert an[0][3] == wire.name_to_wire("web.example.com")  # rdata expanded: re-emittable anywhere
    assert ns[0][1] == wire.SOA


@pytest.mark.parametrize(("answers", "additional", "rcode", "expected"), [
    (("www.example.com. 60 IN A 192.0.2.1", "www.example.com. 60 IN A 192.0.2.2"), (), 0, True),
    (("www.example.com. 60 IN CNAME web.example.com.", "web.example.com. 60 IN A 192.0.2.1"), (), 0, False),
    (("www.example.com. 60 IN A 192.0.2.1", "www.example.com. 60 IN AAAA 2001:db8::1"), (), 0, True),
    (("www.example.com. 60 IN MX 10 a.example.com.", "www.example.com. 60 IN MX 20 b.example.com."), (), 0, True),
    (("www.example.com. 60 IN A 192.0.2.1",), ("a.example.com. 60 IN A 192.0.2.7", "b.example.com. 60 IN A 192.0.2.8"),
     0, True),
    ((), (), 3, False),
])
def test_loadbalance_decides_from_record_headers(answers, additional, rcode, expected):
    """Reordered only when a section has two or more A/AAAA or MX records (NOERROR), as CoreDNS."""
    soa = 30 if rcode else None
    a = message.scan(reply(rcode=rcode, answers=answers, additional=additional, soa_ttl=soa), QUESTION)
    assert message.balanced(a) is expected
    assert message.balanced(a) is expected  # the verdict is kept on the (cached) answer


def test_shuffled_answer_keeps_every_record_whole():
    """Records reordered in every section; compression pointers into moved records (dnslib points
    the A records' owners and the additional section into the CNAME's and MX's rdata) must not
    survive the move: the client's copy parses to the same records, in the new order."""
    answers = ("www.example.com. 300 IN CNAME web.example.com.",
               *(f"web.example.com. 60 IN A 192.0.2.{i}" for i in range(1, 5)))
    extra = ("web.example.com. 60 IN AAAA 2001:db8::1", "web.example.com. 60 IN AAAA 2001:db8::2")
    a = message.scan(reply(answers=answers, additional=extra), QUESTION)
    def records(rec):  # names compared without case: the original's pointers into the question take the client's
        return {(str(r.rname).lower(), r.rtype, str(r.rdata).lower()) for r in rec.rr + rec.ar}

    before = records(client_copy(a)[0])

    def reverse(rrs):
        return list(reversed(rrs))

    b = message.shuffled(a, reverse)
    rec, truncated, _ = client_copy(b)
    assert not truncated and rec.header.id == 0x4242 and str(rec.q.qname) == "WWW.Example.com."
    assert [str(r.rdata) for r in rec.rr] == ["192.0.2.4", "192.0.2.3", "192.0.2.2", "192.0.2.1", "web.example.com."]
    assert [str(r.rdata) for r in rec.ar[:2]] == ["2001:db8::2", "2001:db8::1"] and rec.ar[2].rtype == wire.OPT
    assert records(rec) == before
    assert [r.ttl for r in client_copy(b, age=10)[0].rr] == [50, 50, 50, 50, 290]  # TTLs still found and aged
    small, truncated, data = client_copy(b, edns=False, limit=60)
    assert truncated and len(data) <= 60 and small.header.tc


def test_failure_reply():
    data = message.failure(b"\x00\x07", QUESTION, wire.RD, True, False, wire.SERVFAIL)
    rec = dnslib.DNSRecord.parse(data)
    assert rec.header.id == 7 and rec.header.rcode == wire.SERVFAIL and rec.header.ra and rec.rr == []
    assert str(rec.q.qname) == "www.example.com." and rec.ar[0].rtype == wire.OPT


def test_ids_are_random_16_bit():
    ids = message.IdSource()
    drawn = [ids.next() for _ in range(5000)]
    assert all(0 <= i < 65536 for i in drawn) and len(set(drawn)) > 4500
