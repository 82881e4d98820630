"""The nftables data path: keep the table `ip kube-proxy` (IPv6: `ip6 kube-proxy`, one backend per
family as kube-proxy's) equal to the rendered service ports.

Every sync is one nf_tables transaction (all of it or nothing, and packets see either the old or
the new ruleset). A partial sync touches only what changed: the changed service ports' chains
are rewritten, exactly the map/set elements that differ are deleted and added, and the chains
and affinity sets of removed service ports are deleted after the elements that jumped to them;
it is sent as netlink messages (kproxy.nftables.netlink: `nft -f` would first fetch the whole
chain list, ~1 s at 10,000 services). A full sync (`nft -f`: the first one, hourly, and after a
failure) rewrites the whole table and deletes
service chains and affinity sets nobody owns, which repairs drift and adopts a predecessor's
table: established connections keep their conntrack NAT bindings, and affinity sets (declared,
never flushed) keep the clients they hold. close() leaves the table; cleanup() deletes it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from knet import netfilter
from kproxy import conntrack
from kproxy.model import Config, ServicePort, SyncResult, advance, recount
from kproxy.nftables import netlink
from kproxy.nftables.rules import SPECS, Elements, ServiceNft, ops_text, partial_ops, render_full, render_service

log = logging.getLogger("knet.kproxy.nftables")


def kernel_objects(ip_family: int = 4) -> tuple[set[str], dict[str, int | None]]:
    """The chains of our table, and its sets with their timeouts (empty when the table is absent)."""
    family, table = SPECS[ip_family].table.split()
    chains: set[str] = set()
    sets: dict[str, int | None] = {}
    for what in ("chains", "sets"):
        text = netfilter.nft_list(["-j", "list", what, family])
        for obj in json.loads(text).get("nftables", []) if text else []:
            if "chain" in obj and obj["chain"].get("table") == table:
                chains.add(obj["chain"]["name"])
            elif "set" in obj and obj["set"].get("table") == table:
                sets[obj["set"]["name"]] = obj["set"].get("timeout")
    return chains, sets


def _rules_of(sr: ServiceNft) -> int:
    return sum(len(rules) for rules in sr.chains.values())


class NftablesBackend:
    name = "nftables"

    def __init__(self, cfg: Config, writer: str = "netlink") -> None:
        """`writer`: how partial syncs are written, "netlink" (direct) or "nft" (`nft -f`)."""
        self.cfg = cfg
        self.family = cfg.family
        self.table = SPECS[cfg.family].table
        self.writer = writer
        self.netlink = netlink.Netlink(cfg.family)
        self.ports: dict[str, ServicePort] = {}
        self.rendered: dict[str, ServiceNft] = {}
        self.elements = Elements()
        self.rules = 0  # rules in the per-service chains (kept incrementally)
        self.synced = False

    def sync(self, ports: Mapping[str, ServicePort], changed: AbstractSet[str], full: bool = False) -> SyncResult:
        start = time.monotonic()
        full = full or not self.synced  # the first sync adopts whatever the kernel holds
        ops: list = []
        written = 0
        if full:
            new = dict(ports)
            changed = {k for k in new.keys() | self.ports.keys()
                       if (new.get(k) is not self.ports.get(k)) and new.get(k) != self.ports.get(k)}
            rendered = {k: self.rendered[k] if k in self.rendered and k not in changed else render_service(sp, self.cfg)
                        for k, sp in new.items()}
            elements = Elements()
            elements.replace((k, None, sr) for k, sr in rendered.items())
            kernel_chains, kernel_sets = self._kernel_objects()
            script = render_full(rendered, elements, kernel_chains, kernel_sets, self.family)
        else:
            new, rendered = advance(self.ports, self.rendered, ports, changed,
                                    lambda sp: render_service(sp, self.cfg))
            elements = self.elements
            deletes, adds = elements.replace((k, self.rendered.get(k), rendered.get(k)) for k in changed)
            ops = partial_ops(self.rendered, rendered, changed, deletes, adds, elements)
        try:
            if full:
                netfilter.nft(script)
            elif ops:
                written = self._write(ops)
        except netfilter.NetfilterError:
            if not full:
                self.elements = self._rebuild_elements()  # replace() mutated it: back to what the kernel has
            raise
        conntrack.flush_stale(self.ports, new, changed)
        self.rules = recount(self.rules, self.rendered, rendered, changed, _rules_of, full)
        self.ports, self.rendered, self.elements, self.synced = new, rendered, elements, True
        if full:
            written = sum(line.startswith(("add rule", "add element")) for line in script.splitlines())
        return SyncResult(full=full, services_written=len(new) if full else len(changed), rules=written,
                          seconds=time.monotonic() - start)

    def _write(self, ops: list) -> int:
        """A partial sync's transaction: netlink messages (kproxy.nftables.netlink: no cache fetch),
        or `nft -f` for what that encoder does not know. Returns the rules and elements written."""
        count = sum(1 if op[0] == "add_rule" else len(op[2]) for op in ops if op[0] in ("add_rule", "add_elements"))
        if self.writer == "netlink":
            try:
                self.netlink.apply(ops)
                return count
            except netlink.Unsupported as e:
                log.info("transaction written with nft -f: the netlink encoder does not know %s", e)
            except netlink.KernelError as e:
                raise netfilter.NetfilterError(str(e)) from None
        netfilter.nft(ops_text(ops, self.family))
        return count

    def _kernel_objects(self) -> tuple[set[str], dict[str, int | None]]:
        """Our table's chains and sets, from a netlink dump (nft's JSON listing cost four times as
        much at 10,000 services); from nft when the dump fails."""
        try:
            return self.netlink.objects()
        except (OSError, netlink.KernelError) as e:
            log.warning("netlink dump of the table failed (%s); listing with nft", e)
            return kernel_objects(self.family)

    def _rebuild_elements(self) -> Elements:
        elements = Elements()
        elements.replace((k, None, sr) for k, sr in self.rendered.items())
        return elements

    def entries(self) -> int:
        """Rules and map/set elements this backend owns (for metrics)."""
        return self.rules + len(self.elements.owners)

    def close(self) -> None:
        """The netlink socket only: the table stays, so traffic keeps flowing while the daemon restarts."""
        self.netlink.close()

    def cleanup(self) -> None:
        """Delete the table and everything in it (uninstall); absent already is fine."""
        netfilter.run(["nft", "delete", "table", *self.table.split()])
        self.ports, self.rendered, self.elements, self.synced = {}, {}, Elements(), False
