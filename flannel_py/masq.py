"""flanneld's iptables rules, in the namespace the daemon runs in.

--ip-masq (nat table), chain FLANNEL-POSTRTG jumped to from POSTROUTING:
    RETURN     kube-proxy-marked packets (0x4000: kube-proxy masquerades those itself)
    RETURN     pod subnet -> cluster Network         (pod-to-pod keeps its source address)
    RETURN     cluster Network -> pod subnet
    RETURN     ! cluster Network -> pod subnet       (outside traffic to our pods, e.g. NodePort)
    MASQUERADE cluster Network -> ! 224.0.0.0/4      (pods leaving the cluster)
    MASQUERADE ! cluster Network -> cluster Network  (the host talking to remote pods)
Forwarding (filter table, on by default as in flanneld), chain FLANNEL-FWD from FORWARD:
    ACCEPT -s Network, ACCEPT -d Network (hosts whose FORWARD policy is DROP still carry pods)

Rendering is pure (unit-tested); applying uses iptables-restore --noflush, which replaces our
chains atomically and leaves every other rule alone. Dual-stack: the same chains in ip6tables for
IPv6Network and the node's IPv6 subnet (multicast there is ff00::/8), as flanneld does.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Network, IPv6Network

from knet import netfilter

log = logging.getLogger(__name__)

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
KUBE_PROXY_MARK = "0x4000/0x4000"
_MASQ_NOTE = '-m comment --comment "flanneld masq"'
_FWD_NOTE = '-m comment --comment "flanneld forward"'
Net = IPv4Network | IPv6Network


def binary(network: Net) -> str:
    return "iptables" if network.version == 4 else "ip6tables"


def masq_rules(network: Net, subnet: Net, random_fully: bool = True) -> list[str]:
    """The FLANNEL-POSTRTG rule specs, in order (for the family of `network`)."""
    masq = "-j MASQUERADE --random-fully" if random_fully else "-j MASQUERADE"
    multicast = "224.0.0.0/4" if network.version == 4 else "ff00::/8"
    c = MASQ_CHAIN
    return [
        f"-A {c} -m mark --mark {KUBE_PROXY_MARK} {_MASQ_NOTE} -j RETURN",
        f"-A {c} -s {subnet} -d {network} {_MASQ_NOTE} -j RETURN",
        f"-A {c} -s {network} -d {subnet} {_MASQ_NOTE} -j RETURN",
        f"-A {c} ! -s {network} -d {subnet} {_MASQ_NOTE} -j RETURN",
        f"-A {c} -s {network} ! -d {multicast} {_MASQ_NOTE} {masq}",
        f"-A {c} ! -s {network} -d {network} {_MASQ_NOTE} {masq}",
    ]


def forward_rules(network: Net) -> list[str]:
    return [f"-A {FWD_CHAIN} -s {network} {_FWD_NOTE} -j ACCEPT",
            f"-A {FWD_CHAIN} -d {network} {_FWD_NOTE} -j ACCEPT"]


def render_restore(table: str, chain: str, rules: list[str]) -> str:
    """iptables-restore input that (re)creates one chain with exactly these rules.

    Declaring the chain flushes it, so a re-apply never duplicates rules.
    """
    return "\n".join([f"*{table}", f":{chain} - [0:0]", *rules, "COMMIT"]) + "\n"


def jump_rule(table: str) -> list[str]:
    """The rule spec (iptables argv, without -A/-C) that sends traffic into our chain."""
    if table == "nat":
        return ["POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", MASQ_CHAIN]
    return ["FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", FWD_CHAIN]


def _ensure_jump(table: str, cmd: str = "iptables") -> None:
    # Inserted first so our chain runs before rules that other components append.
    spec = jump_rule(table)
    netfilter.ensure_jump(table, spec[0], spec[1:], binary=cmd, create_target=False, position=1)


def _restore(table: str, chain: str, rules: list[str], cmd: str = "iptables") -> None:
    netfilter.restore(render_restore(table, chain, rules), cmd)


def current(table: str, chain: str, cmd: str = "iptables") -> list[str]:
    proc = netfilter.iptables(["-t", table, "-S", chain], cmd)
    if proc.returncode != 0:
        return []
    return [line for line in proc.stdout.splitlines() if line.startswith("-A ")]


def ensure_masq(network: Net, subnet: Net) -> bool:
    """Make FLANNEL-POSTRTG exactly right (in the family's iptables); True if anything had to change."""
    cmd = binary(network)
    changed = False
    want = masq_rules(network, subnet)
    if _normalise(current("nat", MASQ_CHAIN, cmd)) != _normalise(want):
        try:
            _restore("nat", MASQ_CHAIN, want, cmd)
        except netfilter.NetfilterError:
            # An iptables without --random-fully support: plain MASQUERADE, as flanneld falls back.
            want = masq_rules(network, subnet, random_fully=False)
            _restore("nat", MASQ_CHAIN, want, cmd)
        changed = True
    _ensure_jump("nat", cmd)
    return changed


def ensure_forward(network: Net) -> bool:
    cmd = binary(network)
    want = forward_rules(network)
    changed = False
    if _normalise(current("filter", FWD_CHAIN, cmd)) != _normalise(want):
        _restore("filter", FWD_CHAIN, want, cmd)
        changed = True
    _ensure_jump("filter", cmd)
    return changed


def _normalise(rules: list[str]) -> list[str]:
    # `iptables -S` prints the comment module's argument unquoted when it has no spaces and
    # reorders nothing else, so comparing after dropping quotes is enough.
    return [r.replace('"', "") for r in rules]
