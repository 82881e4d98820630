"""The iptables data path: keep the kernel's KUBE-* chains equal to the rendered ones.

Partial syncs rewrite only the chains of changed service ports in one iptables-restore (plus the
shared chains, always whole), as kube-proxy's MinimizeIPTablesRestore does; a full sync rewrites
everything, deletes chains nobody owns any more (also ones left by a previous run) and re-ensures
the jumps from the built-in chains, which repairs any drift. A backend serves one family
(Config.family): IPv6 goes through the ip6tables variant of the node's iptables (`family_binary`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from knet import netfilter
from kproxy import conntrack
from kproxy.iptables.rules import (
    JUMPS,
    NAT_FIXED_RULES,
    ServiceRules,
    chain_names,
    render_partial_restore,
    render_restore,
    render_service,
)
from kproxy.model import Config, ServicePort, SyncResult, advance, recount

log = logging.getLogger("knet.kproxy.iptables")
OWN_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-")


HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


def legacy_tables() -> list[str]:
    """The legacy (x_tables) tables that exist in this namespace. Read from /proc, because asking
    iptables-legacy about a table instantiates it (with hooks) in the namespace."""
    try:
        with open("/proc/net/ip_tables_names") as f:
            return f.read().split()
    except OSError:
        return []


def detect_binary() -> str:
    """The iptables variant kube-proxy's image uses on this node (kubernetes-sigs/iptables-wrappers):
    the one whose mangle table holds the kubelet's hint chain; else the one with more rules; with
    no rules in either (a fresh node), nf_tables. kube-proxy follows the node rather than choosing,
    so the rules of the node's other agents and kube-proxy's end up in the same backend. Nothing
    is created by looking (legacy tables only read when they exist)."""
    rules = {"iptables-nft": 0, "iptables-legacy": 0}
    present = {"iptables-nft": ["mangle", "nat", "filter"], "iptables-legacy": legacy_tables()}
    for binary, tables in present.items():
        for table in tables:
            proc = netfilter.run([f"{binary}-save", "-t", table])
            if proc.returncode != 0:
                continue
            if table == "mangle" and any(f":{c} " in proc.stdout for c in HINT_CHAINS):
                return binary
            rules[binary] += sum(line.startswith("-") for line in proc.stdout.splitlines())
    return "iptables-legacy" if rules["iptables-legacy"] > rules["iptables-nft"] else "iptables-nft"


def family_binary(binary: str, family: int) -> str:
    """The iptables command of `family` in the same variant ("iptables-nft" -> "ip6tables-nft")."""
    if family != 6 or binary.startswith("ip6tables"):
        return binary
    return binary.replace("iptables", "ip6tables", 1)


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
    """A service port's nat rules: its own chains and its entries in the shared chains."""
    return sum(len(rules) for rules in r.nat_chains.values()) + len(r.nat_shared) + len(r.nat_nodeports)


def count_rules(text: str) -> dict[str, int]:
    """Rules ("-A" lines) per table of an iptables-restore input."""
    counts: dict[str, int] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            counts.setdefault(table, 0)
        elif line.startswith(("-A ", "-I ")):
            counts[table] += 1
    return counts


class IptablesBackend:
    name = "iptables"

    def __init__(self, cfg: Config, binary: str = "iptables") -> None:
        self.cfg = cfg
        self.binary = family_binary(binary, cfg.family)
        self.ports: dict[str, ServicePort] = {}
        self.rendered: dict[str, ServiceRules] = {}
        self.rejects: dict[str, tuple[list[str], list[str]]] = {}  # ports with filter lines (no endpoints)
        self.own_rules = 0  # rules in the per-service chains (kept incrementally, for the rule count)
        self.synced = False

    def kernel_chains(self, table: str = "nat") -> set[str]:
        return kernel_chains(table, self.binary)

    # -- sync
    @staticmethod
    def _note_rejects(rejects: dict[str, tuple[list[str], list[str]]], key: str, sr: ServiceRules | None) -> None:
        """Keep the filter lines (rejects for traffic without endpoints) of the ports that have any."""
        if sr is not None and (sr.filter_services or sr.filter_external):
            rejects[key] = (sr.filter_services, sr.filter_external)
        else:
            rejects.pop(key, None)

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
            text = render_restore(rendered, None, stale, family=self.cfg.family)
            rejects = {}
            for k, sr in rendered.items():
                self._note_rejects(rejects, k, sr)
        else:
            new, rendered = advance(self.ports, self.rendered, ports, changed,
                                    lambda sp: render_service(sp, self.cfg))
            old_chains = {c for k in changed if k in self.rendered for c in self.rendered[k].nat_chains}
            new_chains = {c for k in changed if k in rendered for c in rendered[k].nat_chains}
            rejects = dict(self.rejects)
            for k in changed:
                self._note_rejects(rejects, k, rendered.get(k))
            # Chain names hash the service port's key: only the same port could still want one.
            text = render_partial_restore({k: self.rendered[k] for k in changed if k in self.rendered},
                                          {k: rendered[k] for k in changed if k in rendered},
                                          [rejects[k] for k in sorted(rejects)], old_chains - new_chains)
        netfilter.restore(text, self.binary)
        conntrack.flush_stale(self.ports, new, changed)
        self.own_rules = recount(self.own_rules, self.rendered, rendered, changed, _own_rules, full)
        self.ports, self.rendered, self.rejects, self.synced = new, rendered, rejects, True
        written = count_rules(text)
        tables = {"filter": written["filter"], "nat": NAT_FIXED_RULES + self.own_rules}
        return SyncResult(full=full, services_written=len(new) if full else len(changed),
                          rules=sum(written.values()), seconds=time.monotonic() - start, tables=tables,
                          written=written)

    def entries(self) -> int:
        """nat rules of the service ports this backend owns right now (for metrics)."""
        return self.own_rules

    def close(self) -> None:
        """Nothing to release: the chains stay, so traffic keeps flowing while the daemon restarts."""

    def cleanup(self) -> None:
        """Remove every chain and jump (knet uninstall); not done on SIGTERM, so traffic keeps flowing."""
        remove_chains(JUMPS, {t: sorted(self.kernel_chains(t)) for t in ("nat", "filter")}, self.binary)
