"""ipMasq: masquerade pod traffic leaving the pod network, as the reference bridge plugin does.

One nat chain per attachment, named from a hash of (network name, container ID) so DEL and GC
can find it without any state: POSTROUTING -s <pod ip> -> CNI-<hash>: accept to the pod subnet,
masquerade the rest (except multicast).

Every change is one `iptables-restore --noflush` (one process, one atomic commit): an iptables
process costs ~5-10 ms here, and the reference plugin runs nine of them per ADD and six per DEL.
DEL knows the pod's addresses (from IPAM), so it removes the jump rules and the chain without
listing the table first; only when that fails (already removed, or addresses unknown) does it
list the nat table once and remove exactly what is there.

Per family, as the reference plugin does: IPv4 addresses in iptables' nat table, IPv6 ones in
ip6tables' (the same chain name in each; IPv6 multicast is ff00::/8). A family the pod has no
address in costs nothing: no process runs for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import shlex

from cni.errors import DATAPATH_FAILURE, CniError
from knet import netfilter

CHAIN_PREFIX = "CNI-"
BINARIES = {4: "iptables", 6: "ip6tables"}
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def chain_name(network: str, container_id: str) -> str:
    # iptables chain names are at most 28 characters: "CNI-" + 24 hex.
    return CHAIN_PREFIX + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def _quoted_comment(network: str, container_id: str) -> str:
    return '"' + comment(network, container_id).replace('"', '\\"') + '"'


def families(addresses: list[str]) -> list[int]:
    """The IP versions among the addresses, 4 before 6 (pure)."""
    return sorted({ipaddress.ip_interface(a).version for a in addresses})


def _jumps(network: str, container_id: str, addresses: list[str], version: int = 4) -> list[str]:
    """The POSTROUTING rules (without -A/-D) that send the pod's traffic of one IP version to its
    chain."""
    chain, note = chain_name(network, container_id), _quoted_comment(network, container_id)
    host = 32 if version == 4 else 128
    return [f"POSTROUTING -s {iface.ip}/{host} -m comment --comment {note} -j {chain}"
            for iface in map(ipaddress.ip_interface, addresses) if iface.version == version]


def render_setup(network: str, container_id: str, addresses: list[str], version: int = 4) -> str:
    """iptables-restore (version 4) or ip6tables-restore (6) input (pure, unit-tested) adding the
    attachment's chain for that version's addresses atomically."""
    chain, note = chain_name(network, container_id), _quoted_comment(network, container_id)
    lines = ["*nat", f":{chain} - [0:0]"]
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        if iface.version != version:
            continue
        lines.append(f"-A {chain} -d {iface.network} -m comment --comment {note} -j ACCEPT")
    lines.append(f"-A {chain} ! -d {MULTICAST[version]} -m comment --comment {note} -j MASQUERADE")
    lines += [f"-A {rule}" for rule in _jumps(network, container_id, addresses, version)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_teardown(chains: list[str], jump_rules: list[str]) -> str:
    """iptables-restore input (pure) removing the jump rules (`POSTROUTING ...` without -A) and
    the chains. `:chain` first: it creates a missing chain and empties an existing one, so -X
    succeeds either way."""
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in chains)]
    lines += [f"-D {rule}" for rule in jump_rules]
    lines += [f"-X {chain}" for chain in chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def setup(network: str, container_id: str, addresses: list[str]) -> None:
    done: list[int] = []
    try:
        for version in families(addresses):
            netfilter.restore(render_setup(network, container_id, addresses, version), BINARIES[version])
            done.append(version)
    except netfilter.NetfilterError as e:
        if done:  # the other family's chain: all or nothing
            with contextlib.suppress(CniError):
                remove_chains({chain_name(network, container_id)}, done)
        raise CniError(DATAPATH_FAILURE, f"ipMasq: {e}") from e


def jump_rules(nat_rules: str, chains: set[str]) -> list[str]:
    """The POSTROUTING rules (from `iptables -t nat -S`, without -A) that jump to the chains (pure)."""
    return [line[len("-A "):] for line in nat_rules.splitlines()
            if line.startswith("-A POSTROUTING ") and line.split()[-1] in chains]


def teardown(network: str, container_id: str, addresses: list[str]) -> None:
    chain = chain_name(network, container_id)
    unknown = []
    for version in families(addresses) or list(BINARIES):
        jumps = _jumps(network, container_id, addresses, version)
        if jumps:
            try:
                netfilter.restore(render_teardown([chain], jumps), BINARIES[version])
                continue
            except netfilter.NetfilterError:
                pass
        unknown.append(version)
    if unknown:
        remove_chains({chain}, unknown)


def remove_chains(chains: set[str], versions: list[int] | None = None) -> None:
    """Remove the chains and whatever jumps to them, as listed now, in each IP version's nat table
    (default: both; idempotent)."""
    for version in versions or list(BINARIES):
        listed = netfilter.iptables(["-t", "nat", "-S"], BINARIES[version])
        if listed.returncode != 0:
            continue  # no nat table here (nothing was ever set up)
        present = [c for c in sorted(chains) if f"-N {c}" in listed.stdout.splitlines()]
        jumps = jump_rules(listed.stdout, chains)
        if present or jumps:
            try:
                netfilter.restore(render_teardown(present, jumps), BINARIES[version])
            except netfilter.NetfilterError as e:
                raise CniError(DATAPATH_FAILURE, f"ipMasq: {e}") from e


def parse_comment(text: str) -> tuple[str, str] | None:
    """(network, container ID) from a rule comment written by `comment()` (pure)."""
    if not text.startswith('name: "') or '" id: "' not in text or not text.endswith('"'):
        return None
    network, _, cid = text[len('name: "'):-1].partition('" id: "')
    return network, cid


def list_chains(network: str) -> dict[str, str]:
    """chain -> container ID for every masquerade chain this plugin made for the network, in
    either IP version's nat table (GC)."""
    out: dict[str, str] = {}
    for binary in BINARIES.values():
        listed = netfilter.iptables(["-t", "nat", "-S"], binary)
        for line in listed.stdout.splitlines():
            if not line.startswith(f"-A {CHAIN_PREFIX}") or "--comment" not in line:
                continue
            parts = shlex.split(line)
            parsed = parse_comment(parts[parts.index("--comment") + 1])
            if parsed and parsed[0] == network:
                out[parts[1]] = parsed[1]
    return out
