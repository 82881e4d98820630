"""Netfilter from the calling thread's network namespace: apply an iptables-restore or nft
script, ensure or remove a jump from a built-in chain. One error type for every failure.

Every component that programs netfilter (kproxy's iptables parts and nftables mode, the CNI
plugin's ipMasq, flannel's masquerade and forward rules) goes through here, so the quirks
(the xtables lock wait, `--noflush`, what counts as "already there") live in one place.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

LOCK_WAIT = "5"  # seconds iptables waits for the xtables lock (other agents hold it briefly)
# A whole-table write: a full sync of 10,000 services took over two minutes on a loaded 2-core machine.
APPLY_TIMEOUT = 900.0


class NetfilterError(RuntimeError):
    """A netfilter command failed; the message carries the command's own error output."""


def run(argv: Sequence[str], data: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one command; the result whatever its exit code (callers that tolerate "not there"
    look at it themselves)."""
    return subprocess.run(list(argv), input=data, capture_output=True, text=True, timeout=timeout)


def restore(script: str, binary: str = "iptables", noflush: bool = True) -> None:
    """Apply iptables-restore input atomically (per table). With `noflush` (the default) only the
    chains the script declares are flushed; everything else in the tables stays."""
    argv = [f"{binary}-restore", "-w", LOCK_WAIT] + (["--noflush"] if noflush else [])
    proc = run(argv, script, timeout=APPLY_TIMEOUT)
    if proc.returncode != 0:
        raise NetfilterError(f"{binary}-restore failed: {proc.stderr.strip()[:2000]}")


def iptables(args: Sequence[str], binary: str = "iptables") -> subprocess.CompletedProcess:
    """One iptables command with the lock wait; the result whatever its exit code."""
    return run([binary, "-w", LOCK_WAIT, *args])


def ensure_jump(table: str, chain: str, spec: Sequence[str], binary: str = "iptables",
                create_target: bool = True, position: int | None = None) -> bool:
    """Make sure `chain` has the rule `spec` (which ends in "-j TARGET"); insert it at the top (or
    at `position`) when missing, so it runs before rules other agents append. `create_target`:
    create the target chain first if it does not exist. True if the rule had to be added."""
    if create_target:
        iptables(["-t", table, "-N", spec[-1]], binary)  # exists already: fine
    if iptables(["-t", table, "-C", chain, *spec], binary).returncode == 0:
        return False
    where = [chain] if position is None else [chain, str(position)]
    proc = iptables(["-t", table, "-I", *where, *spec], binary)
    if proc.returncode != 0:
        raise NetfilterError(f"cannot add jump {table}/{chain} -> {spec[-1]}: {proc.stderr.strip()}")
    return True


def delete_jump(table: str, chain: str, spec: Sequence[str], binary: str = "iptables") -> None:
    """Remove the rule if it is there (uninstall paths: absence is not an error)."""
    iptables(["-t", table, "-D", chain, *spec], binary)


def nft(script: str) -> None:
    """Apply an nft script as one transaction (`nft -f -`): all of it or nothing."""
    proc = run(["nft", "-f", "-"], script, timeout=APPLY_TIMEOUT)
    if proc.returncode != 0:
        raise NetfilterError(f"nft -f failed: {proc.stderr.strip()[:2000]}")


def nft_list(args: Sequence[str]) -> str:
    """`nft <args>` output ("" when the object does not exist)."""
    proc = run(["nft", *args])
    return proc.stdout if proc.returncode == 0 else ""
