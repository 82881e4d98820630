"""ipMasq: masquerade pod traffic leaving the pod network, as the reference bridge plugin does.

One nat chain per attachment, named from a hash of (network name, container ID) so DEL and GC
can find it without any state: POSTROUTING -s <pod ip> -> CNI-<hash>: accept to the pod subnet,
masquerade the rest (except multicast).
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex

from cni.errors import DATAPATH_FAILURE, CniError
from knet import netfilter

CHAIN_PREFIX = "CNI-"


def chain_name(network: str, container_id: str) -> str:
    # iptables chain names are at most 28 characters: "CNI-" + 24 hex.
    return CHAIN_PREFIX + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def render_setup(network: str, container_id: str, addresses: list[str]) -> str:
    """iptables-restore input (pure, unit-tested) adding the attachment's chain atomically."""
    chain = chain_name(network, container_id)
    note = comment(network, container_id).replace('"', '\\"')
    lines = ["*nat", f":{chain} - [0:0]"]
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        if iface.version != 4:
            continue
        lines.append(f'-A {chain} -d {iface.network} -m comment --comment "{note}" -j ACCEPT')
    lines.append(f'-A {chain} ! -d 224.0.0.0/4 -m comment --comment "{note}" -j MASQUERADE')
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 4:
            lines.append(f'-A POSTROUTING -s {iface.ip}/32 -m comment --comment "{note}" -j {chain}')
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def setup(network: str, container_id: str, addresses: list[str]) -> None:
    try:
        netfilter.restore(render_setup(network, container_id, addresses))
    except netfilter.NetfilterError as e:
        raise CniError(DATAPATH_FAILURE, f"ipMasq: {e}") from e


def jump_rules(postrouting_rules: str, chain: str) -> list[str]:
    """The `-A POSTROUTING ...` lines (from `iptables -S`) that jump to the chain (pure)."""
    return [line for line in postrouting_rules.splitlines()
            if line.startswith("-A POSTROUTING ") and line.split()[-1] == chain]


def teardown(network: str, container_id: str) -> None:
    remove_chain(chain_name(network, container_id))


def remove_chain(chain: str) -> None:
    listed = netfilter.iptables(["-t", "nat", "-S", "POSTROUTING"])
    if listed.returncode != 0:
        return  # no nat table here (nothing was ever set up)
    for rule in jump_rules(listed.stdout, chain):
        netfilter.iptables(["-t", "nat", *shlex.split(rule.replace("-A ", "-D ", 1))])
    netfilter.iptables(["-t", "nat", "-F", chain])
    netfilter.iptables(["-t", "nat", "-X", chain])


def parse_comment(text: str) -> tuple[str, str] | None:
    """(network, container ID) from a rule comment written by `comment()` (pure)."""
    if not text.startswith('name: "') or '" id: "' not in text or not text.endswith('"'):
        return None
    network, _, cid = text[len('name: "'):-1].partition('" id: "')
    return network, cid


def list_chains(network: str) -> dict[str, str]:
    """chain -> container ID for every masquerade chain this plugin made for the network (GC)."""
    listed = netfilter.iptables(["-t", "nat", "-S"])
    out: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        if not line.startswith(f"-A {CHAIN_PREFIX}") or "--comment" not in line:
            continue
        parts = shlex.split(line)
        parsed = parse_comment(parts[parts.index("--comment") + 1])
        if parsed and parsed[0] == network:
            out[parts[1]] = parsed[1]
    return out
