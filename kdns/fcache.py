"""The cache of forwarded answers, as CoreDNS's `cache` plugin keeps it.

Two parts, as CoreDNS has them: `success` (answers with records) and `denial` (NXDOMAIN and
NODATA), each with a capacity and a maximum and minimum time. An answer is kept for its smallest
TTL, a negative one for min(SOA TTL, SOA MINIMUM) of the SOA in its authority section (RFC 2308
§5), clamped to [min, max]; failures and negative answers without an SOA are not kept.

`prefetch AMOUNT DURATION PERCENTAGE%`: an entry asked AMOUNT times with no gap of DURATION
between two queries is fetched again, in the background, once a query finds less than PERCENTAGE
of its TTL left, so a popular name never expires in front of its clients.

`serve_stale DURATION [immediate|verify] [RESPONSE_TTL]`: an expired entry is kept DURATION
longer. `immediate` (CoreDNS's default) answers from it at once and refreshes it in the
background; `verify` asks the upstreams first and answers from it only when they all fail.
Either way a client gets the last known answer (TTL RESPONSE_TTL) instead of SERVFAIL while the
upstreams are down.

Only the thread that runs the forwarder touches this (no lock); the counters are plain ints read
by the metrics collector.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from kdns.message import Answer


@dataclass(frozen=True, slots=True)
class Prefetch:
    amount: int
    duration: float = 60.0
    percentage: int = 10


@dataclass(frozen=True, slots=True)
class ServeStale:
    duration: float = 3600.0
    verify: bool = False
    response_ttl: int = 0


@dataclass(frozen=True, slots=True)
class CacheConfig:
    success_capacity: int = 9984
    success_ttl: int = 3600
    success_min_ttl: int = 5
    denial_capacity: int = 9984
    denial_ttl: int = 1800
    denial_min_ttl: int = 5
    prefetch: Prefetch | None = None
    serve_stale: ServeStale | None = None


class Entry:
    __slots__ = ("answer", "count", "expires", "last", "refreshing", "stored")

    def __init__(self, answer: Answer, stored: float, expires: float) -> None:
        self.answer = answer
        self.stored = stored
        self.expires = expires
        self.count = 0  # queries in the current run without a gap of prefetch.duration
        self.last = stored
        self.refreshing = False  # a background fetch (prefetch or stale refresh) is under way


FRESH, STALE = 0, 1


class ForwardCache:
    def __init__(self, cfg: CacheConfig) -> None:
        self.cfg = cfg
        self.success: dict[bytes, Entry] = {}
        self.denial: dict[bytes, Entry] = {}
        # Counters (CoreDNS's cache metrics).
        self.hits = {"success": 0, "denial": 0}
        self.misses = 0
        self.prefetches = 0
        self.served_stale = 0
        self.evictions = {"success": 0, "denial": 0}

    def __len__(self) -> int:
        return len(self.success) + len(self.denial)

    def get(self, key: bytes, now: float) -> tuple[Entry, int] | None:
        """(entry, FRESH or STALE) or None. A miss and an expired entry past serving are counted
        as misses; the caller counts a stale answer once it serves one."""
        entry = self.success.get(key)
        part = "success"
        if entry is None:
            entry = self.denial.get(key)
            part = "denial"
            if entry is None:
                self.misses += 1
                return None
        if now < entry.expires:
            self.hits[part] += 1
            return entry, FRESH
        stale = self.cfg.serve_stale
        if stale is not None and now < entry.expires + stale.duration:
            return entry, STALE
        del (self.success if part == "success" else self.denial)[key]
        self.misses += 1
        return None

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        """Count a query for `entry`; True when it is popular and near its end (start one fetch)."""
        pf = self.cfg.prefetch
        if pf is None:
            return False
        entry.count = entry.count + 1 if now - entry.last < pf.duration else 1
        entry.last = now
        if entry.refreshing or entry.count < pf.amount:
            return False
        whole = entry.expires - entry.stored
        if entry.expires - now > max(1.0, whole * pf.percentage / 100):
            return False
        entry.refreshing = True
        self.prefetches += 1
        return True

    def put(self, key: bytes, answer: Answer, now: float) -> Entry | None:
        if answer.ttl < 0 or answer.truncated:
            return None
        cfg = self.cfg
        if answer.denial:
            part, cap, ttl = self.denial, cfg.denial_capacity, min(max(answer.ttl, cfg.denial_min_ttl), cfg.denial_ttl)
            name = "denial"
        else:
            part, cap, ttl = self.success, cfg.success_capacity, min(max(answer.ttl, cfg.success_min_ttl),
                                                                      cfg.success_ttl)
            name = "success"
        if ttl <= 0:
            return None
        (self.success if part is self.denial else self.denial).pop(key, None)
        old = part.pop(key, None)
        if old is None and len(part) >= cap:
            self._evict(part, cap, name, now)
        entry = part[key] = Entry(answer, now, now + ttl)
        if old is not None:  # keep the popularity of a refreshed entry
            entry.count, entry.last = old.count, old.last
        return entry

    def _evict(self, part: dict[bytes, Entry], cap: int, name: str, now: float) -> None:
        """Make room in bulk: the oldest tenth, in insertion order (a refreshed entry moves to the
        end; entries past serving are mostly the oldest). One sweep per ~cap/10 insertions that
        reads only what it removes, so a flood of distinct names costs O(1) per query."""
        gone = list(itertools.islice(part, max(1, len(part) - (cap - max(1, cap // 10)))))
        for k in gone:
            del part[k]
        self.evictions[name] += len(gone)

    def refreshed(self, key: bytes) -> None:
        """A background fetch for `key` ended without a new answer: allow the next one."""
        entry = self.success.get(key) or self.denial.get(key)
        if entry is not None:
            entry.refreshing = False
