"""Forwarding as the server does it: the cache or the relay, the client's copy of the answer,
ExternalName targets chased upstream, and the short path for the common configuration's misses.

A mixin of `Server` (server.py): it uses the server's relay, stats, routes, lock and `_respond`.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdns import message, wire
from kdns.answer import Resolution, round_robin
from kdns.blocks import Block, Routes
from kdns.fcache import FRESH, ForwardCache
from kdns.forward import Group, Relay
from kdns.message import Answer
from kdns.metrics import Stats
from kdns.request import Listener, Request
from kdns.wire import NOERROR, OUR_UDP_SIZE, RD, SERVFAIL, Reply

log = logging.getLogger("knet.kdns")
perf = time.perf_counter
_Q = struct.Struct("!HH")


class Relaying:
    relay: Relay
    stats: Stats
    routes: Routes
    lean: Lean | None
    loop_probe_wire: bytes
    pods: Any  # autopath.PodAddresses
    _respond: Callable[..., None]
    _shuffle: Callable[[list], None]

    def _forward(self, req: Request, block: Block, qname: str, name_wire: bytes,
                 deliver: Callable[..., None], arg: Any) -> bool:
        """Ask the upstreams of `block` (or its cache) about `name_wire` (lowercased) with the
        request's type: see _fetch. False: no `forward` covers the name."""
        group = block.forward_for(qname)
        if group is None:
            return False
        self._fetch(block.cache, group, name_wire + _Q.pack(req.q.qtype, req.q.qclass), req.q.do, deliver, arg)
        return True

    def _fetch(self, cache: ForwardCache | None, group: Group, question: bytes, do: bool,
               deliver: Callable[..., None], arg: Any) -> None:
        """The answer to `question` (lowercased name wire + type + class) from the cache or the
        group's upstreams: deliver(arg, answer, age=0, fixed_ttl=None, plugin="forward") now or
        when it comes back (answer None: every upstream failed)."""
        stale = None
        if cache is not None:
            now = time.monotonic()
            hit = cache.get(question + (b"\1" if do else b"\0"), now)
            if hit is not None:
                entry, state = hit
                if state == FRESH:
                    deliver(arg, entry.answer, int(now - entry.stored), None, "cache")
                    if cache.wants_prefetch(entry, now):
                        self.relay.ask(group, question, do, None, cache)
                    return
                serve = cache.cfg.serve_stale
                assert serve is not None
                if not serve.verify:  # immediate: the stale answer now, a fresh one fetched behind it
                    cache.served_stale += 1
                    deliver(arg, entry.answer, 0, serve.response_ttl, "cache")
                    if not entry.refreshing:
                        entry.refreshing = True
                        self.relay.ask(group, question, do, None, cache)
                    return
                stale = entry
        waiter = (deliver, arg) if stale is None else (self._fetched, (deliver, arg, stale, cache))
        self.relay.ask(group, question, do, waiter, cache)

    def _fetched(self, ctx: tuple, answer: Answer | None) -> None:
        deliver, arg, stale, cache = ctx
        if answer is None:  # serve_stale verify: the upstreams failed, the last answer instead
            cache.served_stale += 1
            deliver(arg, stale.answer, 0, cache.cfg.serve_stale.response_ttl, "cache")
            return
        deliver(arg, answer)

    def _deliver_forwarded(self, req: Request, answer: Answer | None, age: int = 0, fixed: int | None = None,
                           plugin: str = "forward") -> None:
        q = req.q
        if answer is not None and req.block is not None and req.block.loadbalance and message.balanced(answer):
            answer = message.shuffled(answer, self._reorder)
        response, rcode, truncated = _relayed(answer, req.data[:2], req.question(), q.flags & RD, q.edns, q.do,
                                              req.limit, age, fixed)
        self._respond(req, response, rcode, plugin, truncated)

    # --- the short path: UDP misses of the common forwarding configuration -----------------------

    def _lean(self, lst: Listener, data: bytes, addr: Any, t0: float) -> bool:
        """A UDP query that misses the fast path, in the usual shape (one question of plain labels,
        class IN, at most an option-less OPT) for a name outside the cluster's zones, when the
        server forwards everything outside them with one `forward .` (the flags' and kubeadm's
        configuration): straight to the cache or the relay, without the general path's objects.
        False: anything else (the general path decides, with the same result)."""
        lean = self.lean
        if lean is None or len(data) < 17 or data[2] & 0xF8 or data[4:11] != b"\0\1\0\0\0\0\0" or data[11] > 1:
            return False  # a response, another opcode, other than one question and <= 1 record
        off = 12
        try:
            length = data[12]
            while 0 < length < 64:
                off += length + 1
                length = data[off]
            qend = off + 5
            if length or qend > len(data) or data[off + 3:qend] != b"\0\1" or off > 266:
                return False
            name = data[12:off + 1].lower()
            if name.endswith(lean.local) or name == self.loop_probe_wire:
                return False
            if data[11]:  # an OPT record: root owner, type 41, version 0, no options
                if len(data) != qend + 11 or data[qend:qend + 3] != b"\0\0\x29" or data[qend + 6] \
                        or data[qend + 9:qend + 11] != b"\0\0":
                    return False
                size = (data[qend + 3] << 8) | data[qend + 4]
                limit = 512 if size < 512 else size if size < OUR_UDP_SIZE else OUR_UDP_SIZE
                edns, do = True, bool(data[qend + 7] & 0x80)
            elif len(data) != qend:
                return False
            else:
                edns, do, limit = False, False, 512
        except IndexError:
            return False
        if lean.autopath and addr[0] in self.pods.namespace_of:
            return False  # a known pod: autopath may apply (the general path)
        ctx = (lst, addr, data[:2], data[12:qend], (data[2] & 1) << 8, edns, do, limit, t0,
               (data[off + 1] << 8) | data[off + 2])
        self._fetch(lean.cache, lean.group, name + data[off + 1:qend], do, self._deliver_lean, ctx)
        return True

    def _deliver_lean(self, ctx: tuple, answer: Answer | None, age: int = 0, fixed: int | None = None,
                      plugin: str = "forward") -> None:
        lst, addr, qid, question, rd, edns, do, limit, t0, qtype = ctx
        lean = self.lean
        if answer is not None and lean is not None and lean.loadbalance and message.balanced(answer):
            answer = message.shuffled(answer, self._reorder)
        response, rcode, truncated = _relayed(answer, qid, question, rd, edns, do, limit, age, fixed)
        try:  # noqa: SIM105 (per query)
            lst.sock.sendto(response, addr)
        except OSError:
            pass
        stats = self.stats
        label = lean.label if lean is not None else "."
        k = (lst.index, label, "udp", qtype, rcode, plugin)
        stats.answered[k] = stats.answered.get(k, 0) + 1
        stats.observe(lst.index, label, perf() - t0)
        if truncated:
            stats.truncated += 1
        if rcode == SERVFAIL and lean is not None and lean.errors:
            log.error("%s: SERVFAIL", message.question_text(question))

    def _chase(self, req: Request, res: Resolution) -> None:
        """An ExternalName's target outside the zone: our CNAME, then the target's records."""
        target = res.chase or ""
        block = self.routes.route(target) or req.block
        assert block is not None
        if not self._forward(req, block, target, wire.name_to_wire(target), self._deliver_chased, (req, res.reply)):
            res.reply.ra = False  # nobody to ask: the bare CNAME
            response, truncated = wire.build(req.q, res.reply, req.limit)
            self._respond(req, response, res.reply.rcode, "kubernetes", truncated)

    def _deliver_chased(self, ctx: tuple[Request, Reply], answer: Answer | None, age: int = 0,
            fixed: int | None = None, plugin: str = "forward") -> None:
        req, reply = ctx
        self._compose(req, reply, answer, age, fixed, "kubernetes")

    def _compose(self, req: Request, reply: Reply, answer: Answer | None, age: int, fixed: int | None,
                 plugin: str) -> None:
        """`reply` (our records) followed by an upstream answer's, RFC 6604's rcode rule."""
        reply.ra = True
        if answer is None:
            reply.rcode, reply.answer, reply.authority, reply.additional = SERVFAIL, [], [], []
        else:
            an, ns, ar = message.records(answer, age)
            if fixed is not None:
                an, ns, ar = ([(o, t, fixed, d) for o, t, _, d in lst] for lst in (an, ns, ar))
            reply.rcode = answer.rcode
            reply.answer = reply.answer + an
            reply.authority = ns if not an else []
            reply.additional = ar
        self._balance(reply, req.block)
        response, truncated = wire.build(req.q, reply, req.limit)
        self._respond(req, response, reply.rcode, plugin, truncated)


    def _reorder(self, rrs: list) -> list | None:
        """`loadbalance`'s order for one section of records (None: nothing to reorder)."""
        return round_robin(rrs, self._shuffle)

    def _balance(self, reply: Reply, block: Block | None) -> None:
        """`loadbalance` on a reply composed here (a CNAME of ours before an upstream's records):
        every section, as CoreDNS's response writer does it to whatever passes."""
        if block is not None and block.loadbalance and reply.rcode == NOERROR:
            for section in ("answer", "authority", "additional"):
                order = round_robin(getattr(reply, section), self._shuffle)
                if order is not None:
                    setattr(reply, section, order)


def _relayed(answer: Answer | None, qid: bytes, question: bytes, rd: int, edns: bool, do: bool, limit: int | None,
             age: int, fixed: int | None) -> tuple[bytes, int, bool]:
    """The client's copy of an upstream answer (SERVFAIL when there is none): bytes, rcode, TC."""
    if answer is None:
        return message.failure(qid, question, rd, edns, do, SERVFAIL), SERVFAIL, False
    response, truncated = message.render(answer, qid, question, rd, edns, do, limit, age, fixed)
    return response, answer.rcode, truncated


@dataclass(frozen=True)
class Lean:
    """The configuration the short path serves: one server block for the root without `log`,
    whose one `forward .` has no `except`."""

    cache: ForwardCache | None
    group: Group
    local: tuple[bytes, ...]  # lowercased wire suffixes of the cluster's zones: the general path
    label: str
    autopath: bool
    errors: bool
    loadbalance: bool

    @classmethod
    def of(cls, routes: Routes) -> Lean | None:
        b = routes.only
        if b is None or b.log or len(b.groups) != 1 or b.groups[0].zone or b.groups[0].excepted:
            return None
        local = tuple(wire.name_to_wire(z) for z in b.own_zones)
        return cls(b.cache, b.groups[0], local, b.label, b.autopath, b.errors, b.loadbalance)
