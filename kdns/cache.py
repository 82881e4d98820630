"""The answer cache behind the UDP fast path: query bytes (less the ID) -> response bytes (less the ID).

The key is the whole query after the ID: question as asked (case included), flags and EDNS
record (buffer size, DO bit). Everything that shapes the response is in it, so a hit is answered
by pasting the client's ID in front of the stored bytes -- no parsing at all. A resolver that
randomises the case of names (0x20) simply gets one entry per spelling, answered with its own
spelling echoed as it must be.

Only answers computed from the record store are stored, never forwarded ones (their TTLs count
down). Each entry is registered under every name its answer was computed from (the question, SRV
targets, CNAME targets in the zone), so a cluster change drops exactly the answers it can affect;
the store reports changed names, including parents that start or stop existing.

Entries are lists [response tail, hits, qtype, rcode, deps, zone]: `hits` holds one counter per
listening socket, which the hot loop bumps in place (so CoreDNS's `server` label stays exact); the
metrics collector sums them (plus the hits of evicted entries) by listener, zone, type and rcode. An entry
leaves the index of every name it was registered under when it goes, so a name that never
changes does not collect the keys of answers that other names' changes keep dropping.
"""

from __future__ import annotations

from collections.abc import Iterable


class AnswerCache:
    def __init__(self, max_entries: int = 100_000, listeners: int = 1) -> None:
        self.max_entries = max_entries
        self.listeners = listeners
        self.entries: dict[bytes, list] = {}  # never rebound: the hot loop holds `entries.get`
        self.by_name: dict[str, set[bytes]] = {}
        self.retired: dict[tuple[int, str, int, int], int] = {}  # hits of dropped entries, by
        # (listener, zone, qtype, rcode)
        self.invalidations = 0
        self.clears = 0

    def __len__(self) -> int:
        return len(self.entries)

    def resize(self, listeners: int) -> None:
        """A new set of listening sockets: entries get one hit counter per socket."""
        if listeners != self.listeners:
            self.clear()
            self.listeners = listeners

    def put(self, key: bytes, tail: bytes, deps: Iterable[str], qtype: int, rcode: int, zone: str = ".") -> None:
        if len(self.entries) >= self.max_entries:
            # A flood of distinct questions (random names): start over rather than track ages.
            self.clear()
            self.clears += 1
        deps = tuple(deps)
        old = self.entries.get(key)
        if old is not None:
            self._drop(key, old)
        self.entries[key] = [tail, [0] * self.listeners, qtype, rcode, deps, zone]
        for name in deps:
            self.by_name.setdefault(name, set()).add(key)

    def invalidate(self, names: Iterable[str]) -> list[bytes]:
        """Drop every answer computed from one of the names; returns the keys of the dropped
        answers that were asked again after being cached (hits > 0): the ones worth recomputing
        before the next query arrives."""
        popular: list[bytes] = []
        dropped = 0
        for name in names:
            for key in self.by_name.pop(name, ()):
                entry = self.entries.get(key)
                if entry is not None:
                    self._drop(key, entry)
                    dropped += 1
                    if any(entry[1]):
                        popular.append(key)
        self.invalidations += dropped
        return popular

    def _drop(self, key: bytes, entry: list) -> None:
        del self.entries[key]
        self._retire(entry)
        for name in entry[4]:
            keys = self.by_name.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_name[name]

    def clear(self) -> None:
        for entry in self.entries.values():
            self._retire(entry)
        self.entries.clear()
        self.by_name.clear()

    def _retire(self, entry: list) -> None:
        self._add(self.retired, entry)

    @staticmethod
    def _add(out: dict[tuple[int, str, int, int], int], entry: list) -> None:
        for listener, n in enumerate(entry[1]):
            if n:
                k = (listener, entry[5], entry[2], entry[3])
                out[k] = out.get(k, 0) + n

    def hits_by_type(self) -> dict[tuple[int, str, int, int], int]:
        """Hits by (listener, zone, qtype, rcode), of live and dropped entries."""
        out = dict(self.retired)
        for entry in list(self.entries.values()):
            self._add(out, entry)
        return out

    def total_hits(self) -> int:
        return sum(self.hits_by_type().values())
