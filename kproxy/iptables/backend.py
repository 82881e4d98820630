"""The iptables data path: keep the kernel's KUBE-* chains equal to the rendered ones.

Partial syncs rewrite only the chains of changed service ports in one iptables-restore (plus the
shared chains, always whole), as kube-proxy's MinimizeIPTablesRestore does; a full sync rewrites
everything, deletes chains nobody owns any more (also ones left by a previous run) and re-ensures
the jumps from the built-in chains, which repairs any drift.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from knet import netfilter
from kproxy import conntrack
from kproxy.iptables.rules import JUMPS, ServiceRules, chain_names, render_restore, render_service
from kproxy.model import Config, ServicePort, SyncResult

log = logging.getLogger("knet.kproxy.iptables")
OWN_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-")


def ensure_jumps(jumps: tuple[tuple[str, str, list[str]], ...], binary: str = "iptables") -> None:
    """The jumps from the built-in chains into ours (re-ensured on every full sync: repairs drift)."""
    for table, chain, spec in jumps:
        netfilter.ensure_jump(table, chain, spec, binary)


def kernel_chains(table: str = "nat", binary: str = "iptables") -> set[str]:
    """The KUBE-* chains in one table of the kernel."""
    proc = netfilter.run([f"{binary}-save", "-t", table])
    return {line[1:].split()[0] for line in proc.stdout.splitlines() if line.startswith(":KUBE-")}


def remove_chains(jumps: tuple[tuple[str, str, list[str]], ...], tables: dict[str, list[str]],
                  binary: str = "iptables") -> None:
    """Uninstall: the jumps, then every chain of `tables` (table -> chains) in one restore per
    table (declaring a chain flushes it; then delete them all) — two iptables calls per chain
    took minutes with thousands of services. When something else still jumps to one of them,
    remove what can be removed, one by one."""
    for table, chain, spec in jumps:
        netfilter.delete_jump(table, chain, spec, binary)
    for table, chains in tables.items():
        if not chains:
            continue
        text = "\n".join([f"*{table}", *[f":{c} - [0:0]" for c in chains], *[f"-X {c}" for c in chains],
                          "COMMIT"]) + "\n"
        try:
            netfilter.restore(text, binary)
            continue
        except netfilter.NetfilterError:
            pass
        for c in chains:
            netfilter.iptables(["-t", table, "-F", c], binary)
        for c in chains:
            netfilter.iptables(["-t", table, "-X", c], binary)


def _own_rules(r: ServiceRules) -> int:
    return sum(len(rules) for rules in r.nat_chains.values())


def count_rules(text: str) -> dict[str, int]:
    """Rules ("-A" lines) per table of an iptables-restore input."""
    counts: dict[str, int] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            counts.setdefault(table, 0)
        elif line.startswith("-A "):
            counts[table] += 1
    return counts


class IptablesBackend:
    name = "iptables"

    def __init__(self, cfg: Config, binary: str = "iptables") -> None:
        self.cfg = cfg
        self.binary = binary
        self.ports: dict[str, ServicePort] = {}
        self.rendered: dict[str, ServiceRules] = {}
        self.own_rules = 0  # rules in the per-service chains (kept incrementally, for the rule count)
        self.synced = False

    def kernel_chains(self, table: str = "nat") -> set[str]:
        return kernel_chains(table, self.binary)

    # -- sync
    def _render(self, key: str, sp: ServicePort) -> ServiceRules:
        """A service port's rules, re-rendered only when the port differs from the last sync's."""
        have = self.ports.get(key)
        if have is not None and (have is sp or have == sp) and key in self.rendered:
            return self.rendered[key]
        return render_service(sp, self.cfg)

    def sync(self, ports: Mapping[str, ServicePort], changed: AbstractSet[str], full: bool = False) -> SyncResult:
        start = time.monotonic()
        full = full or not self.synced
        if full:
            new = dict(ports)
            rendered = {k: self._render(k, sp) for k, sp in new.items()}
            changed = {k for k in new.keys() | self.ports.keys() if new.get(k) != self.ports.get(k)}
            ensure_jumps(JUMPS, self.binary)
            stale = {c for c in self.kernel_chains() if c.startswith(OWN_PREFIXES)} - chain_names(rendered)
            text = render_restore(rendered, None, stale)
        else:
            new, rendered = dict(self.ports), dict(self.rendered)
            for k in changed:
                if k in ports:
                    new[k] = ports[k]
                    rendered[k] = render_service(ports[k], self.cfg)
                else:
                    new.pop(k, None)
                    rendered.pop(k, None)
            old_chains = {c for k in changed if k in self.rendered for c in self.rendered[k].nat_chains}
            new_chains = {c for k in changed if k in rendered for c in rendered[k].nat_chains}
            # Chain names hash the service port's key: only the same port could still want one.
            text = render_restore(rendered, changed, old_chains - new_chains)
        netfilter.restore(text, self.binary)
        flushes = [f for k in changed for f in conntrack.stale_flushes(self.ports.get(k), new.get(k))]
        if flushes:
            conntrack.apply(flushes)
        if full:
            self.own_rules = sum(_own_rules(r) for r in rendered.values())
        else:
            self.own_rules += sum(_own_rules(rendered[k]) for k in changed if k in rendered) - \
                sum(_own_rules(self.rendered[k]) for k in changed if k in self.rendered)
        self.ports, self.rendered, self.synced = new, rendered, True
        written = count_rules(text)
        own_written = sum(_own_rules(rendered[k]) for k in (rendered if full else changed) if k in rendered)
        tables = {"filter": written["filter"], "nat": written["nat"] - own_written + self.own_rules}
        return SyncResult(full=full, services_written=len(new) if full else len(changed),
                          rules=sum(written.values()), seconds=time.monotonic() - start, tables=tables,
                          written=written)

    def entries(self) -> int:
        """Rules in the per-service chains this backend owns right now (for metrics)."""
        return self.own_rules

    def close(self) -> None:
        """Nothing to release: the chains stay, so traffic keeps flowing while the daemon restarts."""

    def cleanup(self) -> None:
        """Remove every chain and jump (knet uninstall); not done on SIGTERM, so traffic keeps flowing."""
        remove_chains(JUMPS, {t: sorted(self.kernel_chains(t)) for t in ("nat", "filter")}, self.binary)
