"""Server blocks at run time: which block a name belongs to, and what that block does with it.

A query goes to the block with the longest zone that contains its name (CoreDNS's rule: stub
domains are blocks of their own); inside it, the cluster records answer the cluster zone (and the
reverse zones the kubernetes plugin lists), and the `forward` with the longest FROM that contains
the name, not listed in its `except`, forwards the rest.
"""

from __future__ import annotations

import struct

from kdns import wire
from kdns.answer import Scope
from kdns.config import BlockConfig, ForwardConfig
from kdns.fcache import ForwardCache
from kdns.forward import Group


def group(cfg: ForwardConfig) -> Group:
    return Group(zone=cfg.zone, upstreams=list(cfg.to), policy=cfg.policy, max_concurrent=cfg.max_concurrent,
                 max_fails=cfg.max_fails, health_check=cfg.health_check,
                 health_question=wire.name_to_wire(cfg.health_domain) + struct.pack("!HH", wire.NS, wire.IN),
                 health_rd=cfg.health_rd, timeout=cfg.timeout, expire=cfg.expire,
                 force_tcp=cfg.force_tcp, failover=cfg.failover, excepted=cfg.excepted)


class Block:
    def __init__(self, cfg: BlockConfig) -> None:
        self.cfg = cfg
        self.label = cfg.label
        k = cfg.kubernetes
        self.kubernetes = k is not None
        self.scope = Scope(k.reverse_zones, k.fallthrough) if k is not None else None
        self.cluster_zone = k.zone if k is not None else None
        # Names the cluster records may answer: the cluster zone and the kubernetes reverse zones
        # (a quick test that spares forwarded names the record store's lookup).
        own = (k.zone, *k.reverse_zones) if k is not None else ()
        self.own_zones = frozenset(own)
        self.own_suffixes = tuple("." + z for z in own)
        self.groups = sorted((group(f) for f in cfg.forwards), key=lambda g: -len(g.zone))
        self.cache = ForwardCache(cfg.cache) if cfg.cache is not None else None
        self.autopath = cfg.autopath
        self.log = cfg.log
        self.errors = cfg.errors
        self.loadbalance = cfg.loadbalance

    def is_local(self, qname: str) -> bool:
        return qname.endswith(self.own_suffixes) or qname in self.own_zones

    def plugin_names(self) -> list[str]:
        """The plugins this block enables (coredns_plugin_enabled)."""
        c = self.cfg
        named = [("kubernetes", c.kubernetes is not None), ("forward", bool(c.forwards)),
                 ("cache", c.cache is not None), ("autopath", c.autopath), ("log", c.log), ("errors", c.errors),
                 ("loop", c.loop), ("loadbalance", c.loadbalance)]
        return [name for name, on in named if on]

    def forward_for(self, qname: str) -> Group | None:
        for g in self.groups:
            zone = g.zone
            if (not zone or qname == zone or qname.endswith("." + zone)) and not (g.excepted and g.excludes(qname)):
                return g
        return None


class Routes:
    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.by_zone = {zone: b for b in blocks for zone in b.cfg.zones}
        self.only = blocks[0] if len(self.by_zone) == 1 and "" in self.by_zone else None

    def route(self, qname: str) -> Block | None:
        if self.only is not None:
            return self.only
        by_zone = self.by_zone
        name = qname
        while True:
            b = by_zone.get(name)
            if b is not None or not name:
                return b
            dot = name.find(".")
            name = "" if dot < 0 else name[dot + 1:]

    def groups(self) -> list[Group]:
        return [g for b in self.blocks for g in b.groups]
