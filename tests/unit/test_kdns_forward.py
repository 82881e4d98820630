"""kdns forwarding, the pure parts: upstream replies parsed (compression undone), cache TTLs
(positive, negative from the SOA, never for failures), TTLs aged on the way out, configuration."""

from __future__ import annotations

import asyncio
import socket
import time

import dnslib
import pytest

from kdns import forward, wire
from kdns.daemon import Kdns, parse_args, parse_listen, resolv_conf_upstreams
from kdns.forward import Forwarder, Result, Upstream, aged, cache_ttl, parse_response
from knet_testing.kdns import FakeUpstream


def upstream_reply(rcode: int = 0, answers: list[str] = (), soa_ttl: int | None = None, tc: bool = False) -> bytes:
    rec = dnslib.DNSRecord(dnslib.DNSHeader(id=99, qr=1, ra=1, rcode=rcode, tc=int(tc)),
                           q=dnslib.DNSQuestion("WWW.example.com", dnslib.QTYPE.A))
    for rr in answers:
        rec.add_answer(*dnslib.RR.fromZone(rr))
    if soa_ttl is not None:
        rec.add_auth(*dnslib.RR.fromZone(f"example.com. {soa_ttl} IN SOA ns.example.com. root.example.com. 1 2 3 4 30"))
    return rec.pack()  # dnslib compresses names, as real servers do


def test_parse_response_expands_compressed_names():
    data = upstream_reply(answers=["www.example.com. 300 IN CNAME web.example.com.",
                                   "web.example.com. 60 IN A 192.0.2.1"])
    qid, _, qwire, qtype, result = parse_response(data)
    assert qid == 99 and qtype == wire.A and qwire == wire.name_to_wire("www.example.com")
    cname, a = result.answer
    assert cname[0] == wire.name_to_wire("www.example.com") and cname[2] == 300
    assert cname[3] == wire.name_to_wire("web.example.com")  # rdata expanded, re-emittable anywhere
    assert a[3] == bytes((192, 0, 2, 1))
    # Re-emitted into our own message, an independent parser agrees.
    q = wire.parse_query(dnslib.DNSRecord.question("www.example.com").pack())
    rec = dnslib.DNSRecord.parse(wire.build(q, wire.Reply(answer=result.answer), None)[0])
    assert [str(rr.rdata) for rr in rec.rr] == ["web.example.com.", "192.0.2.1"]


def test_parse_response_soa_and_garbage():
    _, _, _, _, result = parse_response(upstream_reply(rcode=3, soa_ttl=600))
    assert result.rcode == wire.NXDOMAIN and result.authority[0][1] == wire.SOA
    cut = upstream_reply(answers=["a.example.com. 5 IN A 1.2.3.4"])[:-2]
    for bad in (b"", b"\x00" * 11, upstream_reply()[:20], cut):
        with pytest.raises(wire.FormError):
            parse_response(bad)


def test_cache_ttls():
    pos = parse_response(upstream_reply(answers=["www.example.com. 300 IN A 192.0.2.1",
                                                 "www.example.com. 60 IN A 192.0.2.2"]))[4]
    assert cache_ttl(pos, 3600) == 60 and cache_ttl(pos, 10) == 10
    neg = parse_response(upstream_reply(rcode=3, soa_ttl=600))[4]
    assert cache_ttl(neg, 3600) == 30  # min(SOA TTL 600, MINIMUM 30)
    nodata = parse_response(upstream_reply(rcode=0, soa_ttl=20))[4]
    assert cache_ttl(nodata, 3600) == 20
    assert cache_ttl(parse_response(upstream_reply(rcode=3))[4], 3600) == 0  # no SOA: not cached
    assert cache_ttl(Result(wire.SERVFAIL, [], [], []), 3600) == 0


def test_aged_never_below_zero():
    r = Result(0, [(b"\x00", wire.A, 60, b"\x01\x02\x03\x04")], [], [(b"\x00", wire.A, 5, b"\x01\x02\x03\x04")])
    out = aged(r, 10)
    assert out.answer[0][2] == 50 and out.additional[0][2] == 0 and r.answer[0][2] == 60


def test_lookup_expires(monkeypatch):
    fwd = Forwarder([Upstream("127.0.0.1")])
    now = [1000.0]
    monkeypatch.setattr(forward.time, "monotonic", lambda: now[0])
    key = (wire.name_to_wire("www.example.com"), wire.A, False)
    fwd.cache[key] = (now[0], now[0] + 60, Result(0, [(b"\x00", wire.A, 60, b"\x01\x02\x03\x04")], [], []))
    now[0] += 15
    hit = fwd.lookup(wire.name_to_wire("WWW.Example.com"), wire.A)
    assert hit is not None and hit.answer[0][2] == 45 and fwd.hits == 1
    now[0] += 50
    assert fwd.lookup(key[0], wire.A) is None and key not in fwd.cache


def test_upstream_and_listen_parsing(tmp_path):
    assert Upstream.parse("10.0.0.1") == Upstream("10.0.0.1", 53)
    assert Upstream.parse("127.0.0.1:5353") == Upstream("127.0.0.1", 5353)
    assert Upstream.parse("[fd00::1]:53") == Upstream("fd00::1", 53)
    assert Upstream.parse("fd00::1") == Upstream("fd00::1", 53)
    assert parse_listen("10.96.0.10:53") == ("10.96.0.10", 53)
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nsearch a.b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:5\n")
    assert resolv_conf_upstreams(str(conf)) == [Upstream("10.0.0.2"), Upstream("fe80::1")]
    assert resolv_conf_upstreams(str(tmp_path / "missing")) == []


def test_daemon_never_forwards_to_itself():
    k = Kdns(parse_args(["--listen", "10.96.0.10:53", "--upstream", "10.96.0.10", "--upstream", "192.0.2.1:53",
                         "--cluster-domain", "Example.Internal."]))
    assert k.forwarder.upstreams == [Upstream("192.0.2.1")]
    assert k.cfg.zone == "example.internal" and k.cfg.ns_addresses == ("10.96.0.10",)


def test_queries_share_rotating_upstream_sockets():
    """Concurrent misses go over one socket per upstream, renewed every CHANNEL_QUERIES queries
    (a fresh source port), and every query gets its own answer back."""
    names = {f"h{i}.example.test": [f"192.0.2.{i % 250 + 1}"] for i in range(250)}
    with FakeUpstream(records=names) as up:
        fwd = Forwarder([Upstream("127.0.0.1", up.port)], timeout=3.0)

        async def ask_all() -> list:
            try:
                return await asyncio.gather(*(fwd.resolve(wire.name_to_wire(n), wire.A) for n in names))
            finally:
                fwd.close()

        results = asyncio.run(ask_all())
    for name, result in zip(names, results, strict=True):
        assert result is not None and result.rcode == wire.NOERROR
        assert [socket.inet_ntoa(rr[3]) for rr in result.answer] == names[name]
    expected = -(-len(names) // forward.CHANNEL_QUERIES)
    assert len(up.udp_sources) == expected, up.udp_sources


def test_refused_upstream_fails_fast_and_the_next_one_answers():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    with FakeUpstream(records={"www.example.test": ["192.0.2.9"]}) as up:
        fwd = Forwarder([Upstream("127.0.0.1", dead_port), Upstream("127.0.0.1", up.port)], timeout=3.0)

        async def ask() -> tuple:
            try:
                t0 = time.monotonic()
                result = await fwd.resolve(wire.name_to_wire("www.example.test"), wire.A)
                return result, time.monotonic() - t0
            finally:
                fwd.close()

        result, took = asyncio.run(ask())
    assert result is not None and socket.inet_ntoa(result.answer[0][3]) == "192.0.2.9"
    assert took < 1.0, f"the refusing upstream cost {took:.2f}s (its ICMP error should end the wait)"
    assert fwd.requests[(f"127.0.0.1:{dead_port}", "error")] == 1
