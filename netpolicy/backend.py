"""The kernel side: apply `nft.Ruleset`s with `nft -f`, read per-policy drop counters, check drift.

The backend remembers what it last applied and sends only the difference (`nftscript`: a staging
transaction that adds new objects, then one atomic switch). The first apply, any apply after a
failure, and `full=True` sync against whatever the table holds instead. Per-policy drop counters
keep their values through both.

`netns`: run nft inside that named network namespace (`ip netns exec`), as the lab tests and the
benchmark do for each node; None = the caller's own namespace (the daemon runs inside its node).
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import time
from dataclasses import dataclass

from knet import netns as knetns
from netpolicy import nft, nftscript
from netpolicy.model import Compiled

log = logging.getLogger("knet.netpolicy")
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"
# IPv6 has its own switch: without it bridged IPv6 pod traffic skips the inet forward hook.
BRIDGE_NF6 = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"


class NftError(RuntimeError):
    pass


@dataclass
class ApplyResult:
    full: bool
    commands: int
    seconds: float


class NftBackend:
    def __init__(self, netns: str | None = None, table: str = nft.TABLE) -> None:
        self.netns = netns
        self.table = table
        self.current: nft.Ruleset | None = None  # what the kernel holds (None: unknown)
        self.compiled: Compiled | None = None  # what `current` was built from
        self.salt = ""
        self._chains: dict = {}  # nft.build's cache of chains by direction

    # -- plumbing
    def _nft(self, args: list[str], stdin: str | None = None) -> str:
        argv = ["nft", *args]
        if self.netns:
            argv = knetns.exec_argv(self.netns, argv)
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NftError(f"nft {' '.join(args)} failed: {proc.stderr.strip()[:2000]}")
        return proc.stdout

    def ensure_bridge_netfilter(self) -> bool:
        """Bridged (same-node) pod traffic reaches the inet forward hook only with
        bridge-nf-call-iptables=1 (IPv4) and bridge-nf-call-ip6tables=1 (IPv6) in this namespace
        (per-namespace sysctls). Returns whether they are on."""
        try:
            if self.netns:
                own = knetns.inode()
                with knetns.enter(self.netns):
                    if knetns.inode() == own:  # never touch the namespace we were started in by mistake
                        raise NftError(f"{self.netns} is the caller's own namespace")
                    return _set_bridge_nf()
            return _set_bridge_nf()
        except FileNotFoundError:
            log.warning("%s missing (br_netfilter not loaded): same-node pod traffic is not filtered", BRIDGE_NF)
            return False

    # -- applying
    def apply(self, compiled: Compiled, full: bool = False) -> ApplyResult:
        """Program `compiled`: incrementally when we know what the kernel holds, else (or with
        full=True, or when the incremental update fails) a full sync against the listed table."""
        start = time.monotonic()
        if not full and self.current is not None:
            rs = nft.build(compiled, self.salt, self._chains)
            try:
                lines = self._update(rs, self.current, nftscript.Listing.of(self.current))
                self.current, self.compiled = rs, compiled
                return ApplyResult(False, lines, time.monotonic() - start)
            except NftError:
                # The kernel does not hold what we think (someone edited the table): start over.
                log.warning("incremental update failed; doing a full sync", exc_info=True)
        self.current = None
        self.salt = secrets.token_hex(3)  # every set and chain of a full sync is new
        rs = nft.build(compiled, self.salt, self._chains)
        lines = self._update(rs, None, self.listing())
        self.current, self.compiled = rs, compiled
        return ApplyResult(True, lines, time.monotonic() - start)

    def _update(self, rs: nft.Ruleset, old: nft.Ruleset | None, have: nftscript.Listing) -> int:
        stage, switch = nftscript.stage_script(rs, have), nftscript.switch_script(rs, old, have)
        for script in (stage, switch):  # two transactions: see nftscript for why
            if script:
                self._nft(["-f", "-"], script)
        return stage.count("\n") + switch.count("\n")

    def remove(self) -> None:
        """Delete the table (no enforcement at all afterwards)."""
        self._nft(["-f", "-"], f"table {nft.FAMILY} {self.table} {{}}\ndelete table {nft.FAMILY} {self.table}\n")
        self.current = None

    # -- reading back
    def listing(self) -> nftscript.Listing:
        try:
            # -t (terse): names only, no set elements: listing a big table in full takes long.
            return nftscript.Listing.parse(self._nft(["-t", "-j", "list", "table", nft.FAMILY, self.table]))
        except NftError as e:
            if "No such file or directory" in str(e):
                return nftscript.Listing()
            raise

    def drops(self) -> dict[str, int]:
        """Packets dropped per counter name (see `nft.counter_name`)."""
        out = self._nft(["-j", "list", "counters", "table", nft.FAMILY, self.table])
        result = {}
        for item in json.loads(out).get("nftables", []):
            c = item.get("counter")
            if c and c.get("table") == self.table:
                result[c["name"]] = int(c.get("packets", 0))
        return result

    def in_sync(self) -> bool:
        """Does the kernel hold exactly what we last applied (the drift check)?"""
        if self.current is None:
            return False
        try:
            return self.listing().matches(self.current)
        except NftError:
            return False


def _set_bridge_nf() -> bool:
    for path in (BRIDGE_NF, BRIDGE_NF6):
        with open(path) as f:
            if f.read().strip() == "1":
                continue
        with open(path, "w") as f:
            f.write("1")
        log.info("set net.bridge.%s=1 so bridged pod traffic is filtered", path.rsplit("/", 1)[1])
    return True
