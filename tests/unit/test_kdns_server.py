"""kdns server logic without sockets: the answer cache, its invalidation on cluster changes,
truncation, garbage, and the metrics rendering."""

from __future__ import annotations

import random

import dnslib
import pytest

from kdns import wire
from kdns.forward import Forwarder, Upstream
from kdns.records import RecordStore
from kdns.server import Server
from kdns.wire import SRV, A
from knet_testing.kdns import endpoint_slice, query, service

Z = "cluster.local"


@pytest.fixture
def server() -> Server:
    store = RecordStore()
    store.update_service("default/web", service("web", "default", "10.96.0.20", [("http", 80, "TCP")]))
    return Server(store)


def ask(server: Server, data: bytes, udp: bool = True) -> dnslib.DNSRecord | None:
    """What a client gets: the fast path (cache) when it hits, else the slow path."""
    entry = server.cache.entries.get(data[2:])
    if entry is not None and udp:
        entry[1] += 1
        return dnslib.DNSRecord.parse(data[:2] + entry[0])
    resp, pending = server._prepare(data, udp=udp)
    assert pending is None
    return dnslib.DNSRecord.parse(resp) if resp is not None else None


def addresses(rec: dnslib.DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in rec.rr if rr.rtype == A)


def test_answer_cached_with_the_clients_id(server):
    fqdn = f"web.default.svc.{Z}"
    first = ask(server, query(fqdn, qid=1))
    assert addresses(first) == ["10.96.0.20"] and len(server.cache) == 1
    second = ask(server, query(fqdn, qid=2))
    assert second.header.id == 2 and addresses(second) == ["10.96.0.20"]
    assert server.cache.total_hits() == 1


def test_case_variants_echo_their_own_spelling(server):
    rec = ask(server, query("WeB.default.SVC.cluster.local"))
    assert str(rec.q.qname) == "WeB.default.SVC.cluster.local." and addresses(rec) == ["10.96.0.20"]
    rec = ask(server, query("web.DEFAULT.svc.cluster.local"))
    assert str(rec.q.qname) == "web.DEFAULT.svc.cluster.local."


def test_change_and_delete_invalidate_cached_answers(server):
    fqdn = f"web.default.svc.{Z}"
    q = query(fqdn)
    srv_q = query(f"_http._tcp.{fqdn}", SRV)
    assert addresses(ask(server, q)) == ["10.96.0.20"]
    assert len(ask(server, srv_q).rr) == 1
    server.invalidate(server.store.update_service("default/web", service("web", "default", "10.96.0.21")))
    assert addresses(ask(server, q)) == ["10.96.0.21"]
    assert ask(server, srv_q).header.rcode == wire.NXDOMAIN  # the named port is gone
    server.invalidate(server.store.update_service("default/web", None))
    rec = ask(server, q)
    assert rec.header.rcode == wire.NXDOMAIN and rec.rr == []


def test_cached_nxdomain_dropped_when_the_name_appears(server):
    fqdn = f"db.prod.svc.{Z}"
    assert ask(server, query(fqdn)).header.rcode == wire.NXDOMAIN
    assert ask(server, query(f"prod.svc.{Z}")).header.rcode == wire.NXDOMAIN
    server.invalidate(server.store.update_service("prod/db", service("db", "prod", "10.96.5.5")))
    assert addresses(ask(server, query(fqdn))) == ["10.96.5.5"]
    rec = ask(server, query(f"prod.svc.{Z}"))  # now an empty non-terminal: NODATA
    assert rec.header.rcode == wire.NOERROR and rec.rr == []


def test_srv_additional_follows_endpoint_changes(server):
    svc = service("hs", "default", "None", [("http", 80, "TCP")])

    def slice_(ip):
        return [endpoint_slice("hs", endpoints=[{"addresses": [ip], "hostname": "p0"}], ports=[("http", 80, "TCP")])]

    server.invalidate(server.store.update_service("default/hs", svc, slice_("10.244.1.1")))
    q = query(f"_http._tcp.hs.default.svc.{Z}", SRV)
    assert [str(rr.rdata) for rr in ask(server, q).ar if rr.rtype == A] == ["10.244.1.1"]
    server.invalidate(server.store.update_service("default/hs", svc, slice_("10.244.1.2")))
    assert [str(rr.rdata) for rr in ask(server, q).ar if rr.rtype == A] == ["10.244.1.2"]


def test_many_endpoints_truncate_over_udp_not_tcp(server):
    eps = [{"addresses": [f"10.244.{i // 250}.{i % 250 + 1}"]} for i in range(100)]
    server.store.update_service("default/big", service("big", cluster_ip="None"),
                                [endpoint_slice("big", endpoints=eps)])
    q = query(f"big.default.svc.{Z}", edns=None)
    rec = ask(server, q)
    assert rec.header.tc and rec.rr == []
    assert ask(server, q).header.tc  # the truncated answer is cached too
    full = ask(server, q, udp=False)
    assert not full.header.tc and len(full.rr) == 100
    assert server.stats.truncated == 1


def test_outside_zone_without_upstream_is_refused_and_with_one_goes_upstream(server):
    assert ask(server, query("example.com")).header.rcode == wire.REFUSED
    fwd = Server(server.store, Forwarder([Upstream("127.0.0.1", 9)]))
    resp, pending = fwd._prepare(query("example.com"), udp=True)
    assert resp is None and pending is not None and pending[1].forward
    # Cluster names never wait for an upstream.
    resp, pending = fwd._prepare(query(f"web.default.svc.{Z}"), udp=True)
    assert resp is not None and pending is None
    assert dnslib.DNSRecord.parse(resp).header.ra  # recursion is available through the upstream


def test_opcode_and_edns_version(server):
    notify = bytearray(query(f"web.default.svc.{Z}"))
    notify[2] |= 4 << 3  # opcode NOTIFY
    assert ask(server, bytes(notify)).header.rcode == wire.NOTIMP
    q = bytearray(query(f"web.default.svc.{Z}"))
    q[-5] = 1  # EDNS version 1 (OPT: name, type, class, ext-rcode, version, flags, rdlen)
    rec = ask(server, bytes(q))
    assert rec.header.rcode == 0 and rec.ar[0].ttl >> 24 == 1  # BADVERS


def test_garbage_flood_then_correct_answers(server):
    rnd = random.Random(11)
    good = query(f"_http._tcp.web.default.svc.{Z}", SRV)
    formerr = dropped = 0
    for i in range(5000):
        if i % 3 == 0:
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 100)))
        else:
            b = bytearray(good)
            for _ in range(rnd.randrange(1, 5)):
                b[rnd.randrange(2, len(b))] = rnd.getrandbits(8)
            data = bytes(b[:rnd.randrange(len(b) + 1)])
        resp, pending = server._prepare(data, udp=True)
        if pending is None and resp is None:
            dropped += 1
        elif resp is not None and resp[3] & 0xF == wire.FORMERR:
            formerr += 1
    assert formerr > 100 and dropped > 100
    rec = ask(server, query(f"web.default.svc.{Z}"))
    assert addresses(rec) == ["10.96.0.20"]


def test_metrics_render(server):
    ask(server, query(f"web.default.svc.{Z}"))
    ask(server, query(f"web.default.svc.{Z}"))
    ask(server, query(f"nope.default.svc.{Z}"))
    server._prepare(b"\x00\x01", udp=True)
    text = server.stats.registry.render()
    assert 'kdns_queries_total{type="A",rcode="NOERROR"} 2' in text
    assert 'kdns_queries_total{type="A",rcode="NXDOMAIN"} 1' in text
    assert 'kdns_cache_hits_total{cache="answer"} 1' in text
    assert 'kdns_dropped_total{reason="malformed"} 1' in text
    assert "kdns_request_duration_seconds" in text


def test_cache_index_does_not_grow_with_churn(server):
    # alias -> web (a CNAME inside the zone): the answer for alias depends on web as well.
    server.store.update_service("default/alias", service("alias", cluster_ip=None, type="ExternalName",
                                                         externalName=f"web.default.svc.{Z}"))
    q = query(f"alias.default.svc.{Z}")
    for i in range(50):
        assert addresses(ask(server, q)) == [f"10.96.0.{20 + i % 2}"]
        server.invalidate(server.store.update_service("default/web",
                                                      service("web", "default", f"10.96.0.{21 - i % 2}")))
    assert sum(len(keys) for keys in server.cache.by_name.values()) <= 2
    assert all(server.cache.entries.get(k) is not None for keys in server.cache.by_name.values() for k in keys)


def test_popular_answers_are_recomputed_after_a_change(server):
    fqdn = f"web.default.svc.{Z}"
    q, once = query(fqdn), query(f"_http._tcp.{fqdn}", SRV)
    ask(server, q)
    ask(server, q)  # asked again from the cache: popular
    ask(server, once)  # asked once: not worth recomputing
    server.invalidate(server.store.update_service("default/web", service("web", "default", "10.96.0.21",
                                                                         [("http", 80, "TCP")])))
    assert q[2:] not in server.cache.entries and once[2:] not in server.cache.entries
    assert server.refresh() == 0
    assert q[2:] in server.cache.entries and once[2:] not in server.cache.entries
    assert addresses(ask(server, q)) == ["10.96.0.21"]  # served by the fast path, new address
    server.invalidate(server.store.update_service("default/web", None))
    server.refresh()
    assert ask(server, q).header.rcode == wire.NXDOMAIN
    assert server.refreshed == 2


def test_refresh_runs_on_the_loop_in_batches(server):
    import asyncio

    from kdns import server as server_mod
    keys = []
    for i in range(server_mod.REFRESH_BATCH * 2 + 5):  # more spellings than one batch holds
        spelled = "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate("webdefault"))
        name = f"{spelled[:3]}.{spelled[3:]}.svc.{Z}"
        q = query(name, qid=i)
        ask(server, q)
        ask(server, q)
        keys.append(q[2:])
    assert len(set(keys)) == len(keys)

    async def change() -> list[int]:
        server.loop = asyncio.get_running_loop()
        with server.lock:
            server.invalidate(server.store.update_service("default/web", service("web", "default", "10.96.0.22")))
        cached_after = []
        for _ in range(4):
            await asyncio.sleep(0)
            cached_after.append(sum(k in server.cache.entries for k in keys))
        return cached_after

    counts = asyncio.run(change())
    assert counts[0] == server_mod.REFRESH_BATCH  # one batch per callback: queries get the lock in between
    assert counts[-1] == len(keys)
    assert all(b"\x0a\x60\x00\x16" in server.cache.entries[k][0] for k in keys)  # 10.96.0.22
