"""The iptables data path: keep the kernel's KUBE-* chains equal to the rendered ones.

Partial syncs rewrite only the chains of changed service ports in one iptables-restore (plus the
shared chains, always whole), as kube-proxy's MinimizeIPTablesRestore does; a full sync rewrites
everything, deletes chains nobody owns any more (also ones left by a previous run) and re-ensures
the jumps from the built-in chains, which repairs any drift.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass

from kproxy import conntrack
from kproxy.iptables.rules import JUMPS, Config, ServiceRules, chain_names, render_restore, render_service
from kproxy.model import ServicePort

log = logging.getLogger("knet.kproxy.iptables")
OWN_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-")


class IptablesError(RuntimeError):
    pass


@dataclass
class SyncResult:
    full: bool
    services_written: int
    rules: int
    seconds: float


def _run(argv: list[str], data: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=data, capture_output=True, text=True, timeout=120)


class IptablesBackend:
    name = "iptables"

    def __init__(self, cfg: Config, binary: str = "iptables") -> None:
        self.cfg = cfg
        self.binary = binary
        self.ports: dict[str, ServicePort] = {}
        self.rendered: dict[str, ServiceRules] = {}

    # -- kernel helpers
    def ensure_jumps(self) -> None:
        for table, chain, spec in JUMPS:
            target = spec[-1]
            _run([self.binary, "-w", "5", "-t", table, "-N", target])  # exists already: fine
            if _run([self.binary, "-w", "5", "-t", table, "-C", chain, *spec]).returncode != 0:
                proc = _run([self.binary, "-w", "5", "-t", table, "-I", chain, *spec])
                if proc.returncode != 0:
                    raise IptablesError(f"cannot add jump {table}/{chain} -> {target}: {proc.stderr.strip()}")

    def kernel_chains(self, table: str = "nat") -> set[str]:
        proc = _run([f"{self.binary}-save", "-t", table])
        return {line[1:].split()[0] for line in proc.stdout.splitlines() if line.startswith(":KUBE-")}

    def restore(self, text: str) -> None:
        proc = _run([f"{self.binary}-restore", "--noflush", "-w", "5"], text)
        if proc.returncode != 0:
            raise IptablesError(f"iptables-restore failed: {proc.stderr.strip()[:2000]}")

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
            self.ensure_jumps()
            stale = {c for c in self.kernel_chains() if c.startswith(OWN_PREFIXES)} - chain_names(rendered)
            text = render_restore(rendered, None, stale)
        else:
            old_chains = {c for k in changed if k in self.rendered for c in self.rendered[k].nat_chains}
            new_chains = {c for k in changed if k in rendered for c in rendered[k].nat_chains}
            text = render_restore(rendered, changed, old_chains - new_chains - chain_names(rendered))
        self.restore(text)
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

    def cleanup(self) -> None:
        """Remove every chain and jump (knet uninstall); not done on SIGTERM, so traffic keeps flowing."""
        for table, chain, spec in JUMPS:
            _run([self.binary, "-w", "5", "-t", table, "-D", chain, *spec])
        for table in ("nat", "filter"):
            chains = sorted(self.kernel_chains(table))
            if not chains:
                continue
            # One restore per table (declaring a chain flushes it; then delete them all): two
            # iptables calls per chain took minutes with thousands of services.
            text = "\n".join([f"*{table}", *[f":{c} - [0:0]" for c in chains], *[f"-X {c}" for c in chains],
                              "COMMIT"]) + "\n"
            if _run([f"{self.binary}-restore", "--noflush", "-w", "5"], text).returncode == 0:
                continue
            # Something else still jumps to one of them: remove what can be removed, one by one.
            for c in chains:
                _run([self.binary, "-w", "5", "-t", table, "-F", c])
            for c in chains:
                _run([self.binary, "-w", "5", "-t", table, "-X", c])
