"""The iptables data path: keep the kernel's KUBE-* chains equal to the rendered ones.

Partial syncs rewrite only the chains of changed service ports in one iptables-restore (plus the
shared chains, always whole), as kube-proxy's MinimizeIPTablesRestore does; a full sync rewrites
everything, deletes chains nobody owns any more (also ones left by a previous run) and re-ensures
the jumps from the built-in chains, which repairs any drift.
"""

from __future__ import annotations

import logging
import time

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


class IptablesBackend:
    name = "iptables"

    def __init__(self, cfg: Config, binary: str = "iptables") -> None:
        self.cfg = cfg
        self.binary = binary
        self.ports: dict[str, ServicePort] = {}
        self.rendered: dict[str, ServiceRules] = {}

    def kernel_chains(self, table: str = "nat") -> set[str]:
        return kernel_chains(table, self.binary)

    # -- sync
    def sync(self, ports: list[ServicePort], full: bool = False) -> SyncResult:
        start = time.monotonic()
        new = {sp.key: sp for sp in ports}
        changed = {k for k in new.keys() | self.ports.keys() if new.get(k) != self.ports.get(k)}
        rendered = dict(self.rendered) if not full else {}
        for k in (new.keys() if full else changed):
            if k in new:
                rendered[k] = render_service(new[k], self.cfg)
            else:
                rendered.pop(k, None)
        if full:
            ensure_jumps(JUMPS, self.binary)
            stale = {c for c in self.kernel_chains() if c.startswith(OWN_PREFIXES)} - chain_names(rendered)
            text = render_restore(rendered, None, stale)
        else:
            old_chains = {c for k in changed if k in self.rendered for c in self.rendered[k].nat_chains}
            new_chains = {c for k in changed if k in rendered for c in rendered[k].nat_chains}
            text = render_restore(rendered, changed, old_chains - new_chains - chain_names(rendered))
        netfilter.restore(text, self.binary)
        flushes = [f for k in changed for f in conntrack.stale_flushes(self.ports.get(k), new.get(k))]
        if flushes:
            conntrack.apply(flushes)
        self.ports, self.rendered = new, rendered
        rules = sum(line.startswith("-A ") for line in text.splitlines())
        return SyncResult(full=full, services_written=len(new) if full else len(changed), rules=rules,
                          seconds=time.monotonic() - start)

    def entries(self) -> int:
        """Rules this backend owns in the kernel right now (for metrics)."""
        return sum(len(r.nat_chains) for r in self.rendered.values())

    def close(self) -> None:
        """Nothing to release: the chains stay, so traffic keeps flowing while the daemon restarts."""

    def cleanup(self) -> None:
        """Remove every chain and jump (knet uninstall); not done on SIGTERM, so traffic keeps flowing."""
        remove_chains(JUMPS, {t: sorted(self.kernel_chains(t)) for t in ("nat", "filter")}, self.binary)
