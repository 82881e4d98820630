"""autopath's walk on the server: a known pod's search path tried here, in one round trip.

A mixin of `Server` (server.py): cluster steps are answered from the store (under the lock),
external ones through Relaying's `_forward`; the first reply that is not NXDOMAIN goes back with
CoreDNS's CNAME in front, or the first reply when every step is NXDOMAIN.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kdns import autopath, message, wire
from kdns.answer import Scope, resolve
from kdns.blocks import Block, Routes
from kdns.message import Answer
from kdns.metrics import Stats
from kdns.records import RecordStore
from kdns.request import Request
from kdns.wire import CNAME, NXDOMAIN, Query, Reply


class Walk:
    """autopath's progress through one client's search path."""

    __slots__ = ("base", "block", "first", "req", "search", "step")

    def __init__(self, req: Request, block: Block, base: str, search: list[str]) -> None:
        self.req, self.block, self.base, self.search = req, block, base, search
        self.step = 0
        self.first: tuple[bytes, bool] | None = None  # the reply to the name as asked


class Walking:
    lock: threading.Lock
    store: RecordStore
    stats: Stats
    routes: Routes
    pods: autopath.PodAddresses
    host_search: list[str]
    _respond: Callable[..., None]
    _forward: Callable[..., bool]
    _compose: Callable[..., None]
    _balance: Callable[..., None]
    _local_answer: Callable[..., Any]

    def _autopath(self, req: Request, block: Block) -> bool:
        """Walk a known pod's search path here (CoreDNS's autopath @kubernetes). False: not a
        search-path expansion from a known pod; the query goes on as usual."""
        ns = self.pods.namespace_of.get(req.addr[0]) if isinstance(req.addr, tuple) else None
        if ns is None or block.cluster_zone is None:
            return False
        search = autopath.search_path(ns, block.cluster_zone, self.host_search)
        base = autopath.base_name(req.q.qname, search[0])
        if not base:
            return False
        walk = Walk(req, block, base, search)
        with self.lock:  # the name as asked: answered here unless it is NXDOMAIN
            res = resolve(self.store, req.q.qname, req.q.qtype, req.q.qclass, block.scope or _NO_SCOPE)
            if res.forward or res.chase or res.reply.rcode != NXDOMAIN:
                return False  # it exists (or is not ours): no walk, the usual path answers it
            walk.first = self._local_answer(req.q, res, req.limit, None, block)
        walk.step = 1
        self._walk(walk)
        return True

    def _walk(self, walk: Walk) -> None:
        req, q = walk.req, walk.req.q
        while walk.step < len(walk.search):
            name = autopath.expand(walk.base, walk.search[walk.step])
            walk.step += 1
            block = self.routes.route(name) or walk.block
            if block.scope is not None:
                with self.lock:
                    res = resolve(self.store, name, q.qtype, q.qclass, block.scope)
                if not res.forward:
                    if res.reply.rcode == NXDOMAIN:
                        continue
                    reply = res.reply
                    reply.answer = _cnamed(q, name, reply.answer)
                    if res.chase and self._forward(req, self.routes.route(res.chase) or block, res.chase,
                                                   wire.name_to_wire(res.chase), self._deliver_walk_chase,
                                                   (walk, reply)):
                        return
                    self._autopathed(walk)
                    reply.ra = True
                    self._balance(reply, req.block)
                    response, truncated = wire.build(q, reply, req.limit)
                    self._respond(req, response, reply.rcode, "autopath", truncated)
                    return
            if self._forward(req, block, name, wire.name_to_wire(name), self._deliver_walk, (walk, name)):
                return
        response, truncated = walk.first or (b"", False)  # every step NXDOMAIN: the first reply
        self._respond(req, response, NXDOMAIN, "autopath", truncated)

    def _autopathed(self, walk: Walk) -> None:
        idx = walk.req.listener.index
        self.stats.autopath[idx] = self.stats.autopath.get(idx, 0) + 1

    def _deliver_walk(self, ctx: tuple[Walk, str], answer: Answer | None, age: int = 0,
            fixed: int | None = None, plugin: str = "forward") -> None:
        walk, name = ctx
        if answer is not None and answer.rcode == NXDOMAIN:
            self._walk(walk)  # on to the next search domain
            return
        if answer is not None:
            self._autopathed(walk)
            an, ns, ar = message.records(answer, age)
            if fixed is not None:
                an, ns, ar = ([(o, t, fixed, d) for o, t, _, d in lst] for lst in (an, ns, ar))
            reply = Reply(answer.rcode, _cnamed(walk.req.q, name, an), ns if not an else [], ar, ra=True)
            self._balance(reply, walk.req.block)
            response, truncated = wire.build(walk.req.q, reply, walk.req.limit)
            self._respond(walk.req, response, reply.rcode, "autopath", truncated)
            return
        self._compose(walk.req, Reply(), None, 0, None, "autopath")

    def _deliver_walk_chase(self, ctx: tuple[Walk, Reply], answer: Answer | None, age: int = 0,
            fixed: int | None = None, plugin: str = "forward") -> None:
        walk, reply = ctx
        self._autopathed(walk)
        self._compose(walk.req, reply, answer, age, fixed, "autopath")


_NO_SCOPE = Scope((), None)


def _cnamed(q: Query, name: str, answer: list) -> list:
    """CoreDNS's autopath cnamer: when there are answer records, a CNAME from the name asked to
    the name that answered goes first (with the TTL of the first record)."""
    if not answer or name == q.qname:
        return list(answer)
    return [(q.qname, CNAME, answer[0][2], name), *answer]
