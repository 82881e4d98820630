"""The forward cache as CoreDNS's `cache` plugin keeps it: success/denial with their TTL bounds,
negative answers for the SOA minimum then gone, prefetch of popular entries near their end,
serve_stale's window, bulk eviction."""

from __future__ import annotations

from kdns import message
from kdns.fcache import FRESH, STALE, CacheConfig, ForwardCache, Prefetch, ServeStale
from tests.unit.test_kdns_message import QUESTION, reply

KEY = QUESTION + b"\0"


def positive(ttl: int = 60) -> message.Answer:
    return message.scan(reply(answers=(f"www.example.com. {ttl} IN A 192.0.2.1",)), QUESTION)


def negative(soa_ttl: int = 600) -> message.Answer:
    return message.scan(reply(rcode=3, soa_ttl=soa_ttl), QUESTION)  # MINIMUM 30


def test_kept_for_the_answer_ttl_within_bounds():
    c = ForwardCache(CacheConfig(success_ttl=3600, success_min_ttl=5))
    c.put(KEY, positive(60), 1000.0)
    assert c.get(KEY, 1059.0)[1] == FRESH and c.get(KEY, 1060.0) is None
    c.put(KEY, positive(1), 1000.0)  # below MINTTL: kept 5 s
    assert c.get(KEY, 1004.0) is not None and c.get(KEY, 1005.0) is None
    c = ForwardCache(CacheConfig(success_ttl=30))  # `cache 30`: at most 30 s
    c.put(KEY, positive(300), 0.0)
    assert c.get(KEY, 29.0) is not None and c.get(KEY, 30.0) is None
    assert c.hits["success"] == 1 and c.misses == 1


def test_negative_answers_cached_then_expired():
    c = ForwardCache(CacheConfig())
    entry = c.put(KEY, negative(600), 0.0)
    assert entry is not None and KEY in c.denial and KEY not in c.success
    assert c.get(KEY, 29.9)[1] == FRESH and c.hits["denial"] == 1
    assert c.get(KEY, 30.0) is None and KEY not in c.denial
    c.put(KEY, message.scan(reply(rcode=3), QUESTION), 0.0)  # no SOA: nothing to go by
    c.put(KEY, message.scan(reply(rcode=2), QUESTION), 0.0)  # SERVFAIL
    assert len(c) == 0


def test_serve_stale_window():
    c = ForwardCache(CacheConfig(serve_stale=ServeStale(duration=100.0)))
    c.put(KEY, positive(60), 0.0)
    entry, state = c.get(KEY, 90.0)
    assert state == STALE and entry.answer.rcode == 0
    assert c.get(KEY, 160.0) is None and len(c) == 0  # past the window: gone


def test_prefetch_only_popular_entries_near_their_end():
    c = ForwardCache(CacheConfig(prefetch=Prefetch(amount=3, duration=10.0, percentage=10)))
    entry = c.put(KEY, positive(100), 0.0)
    assert not any(c.wants_prefetch(entry, t) for t in (1.0, 2.0, 3.0))  # popular, but 97 s left
    assert not c.wants_prefetch(entry, 95.0)  # a gap of 92 s: the run starts again
    assert not c.wants_prefetch(entry, 96.0)
    assert c.wants_prefetch(entry, 97.0)  # 3 in a row, 3 s (< 10 %) left: fetch it again
    assert not c.wants_prefetch(entry, 97.5)  # once: one is under way
    assert c.prefetches == 1
    fresh = c.put(KEY, positive(100), 98.0)  # the prefetched answer replaces it, popularity kept
    assert fresh is not None and fresh.count == entry.count and not fresh.refreshing


def test_bulk_eviction_keeps_the_newest():
    c = ForwardCache(CacheConfig(success_capacity=100))
    keys = [f"{i}".encode() for i in range(250)]
    for i, k in enumerate(keys):
        c.put(k, positive(600), float(i))
    assert len(c.success) <= 100 and keys[-1] in c.success and keys[0] not in c.success
    assert c.evictions["success"] == 150
