"""What kproxy leaves on a node, as uninstall steps (`knet uninstall-node` runs them):

    tc        its bpf filters (knet-tc_*) on any link, and the clsact qdisc once nothing else is on it
    iptables  chains KUBE-* in every table and the rules jumping to them; kubelet's own
              KUBE-FIREWALL / KUBE-KUBELET-CANARY / KUBE-IPTABLES-HINT stay (kubelet owns and
              recreates them)
    nftables  the nftables mode's tables `ip kube-proxy` and `ip6 kube-proxy`, removed with
              NftablesBackend.cleanup()
    bpf       its cgroup programs (sock_*) on the given cgroups; other agents' programs stay
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable

from knet import links, netfilter
from knet.uninstall import Step, iptables_steps
from kproxy.ebpf import bpfsys, loader
from kproxy.model import Config
from kproxy.nftables.backend import NftablesBackend
from kproxy.nftables.rules import SPECS

KUBELET_CHAINS = {"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"}
# The kernel's enum bpf_attach_type values of loader.CGROUP_PROGRAMS' hooks (no bcc needed).
ATTACH_TYPES = {at: bpfsys.ATTACH_TYPES[at] for _, at in loader.CGROUP_PROGRAMS}
BPF_OBJ_NAME_LEN = 16  # the kernel keeps a program's name cut to 15 characters


def owns_chain(chain: str) -> bool:
    return chain.startswith("KUBE-") and chain not in KUBELET_CHAINS


def uninstall_steps(cgroups: Iterable[str] = ()) -> list[Step]:
    """`cgroups`: the cgroup v2 directories kproxy's ebpf mode may have attached to."""
    return [*_tc_steps(), *iptables_steps(owns_chain), *_nftables_steps(), *_cgroup_steps(cgroups)]


def _nftables_steps() -> list[Step]:
    """The nftables mode's tables (one per family), those this network namespace has."""
    if not shutil.which("nft"):
        return []
    return [Step("nft" if family == 4 else f"nft (IPv{family})", (f"nft table {spec.table}",),
                 NftablesBackend(Config(node_name="", family=family)).cleanup)
            for family, spec in SPECS.items() if netfilter.nft_list(["list", "table", *spec.table.split()])]


def _tc_steps() -> list[Step]:
    steps = []
    with links.iproute() as ipr:
        for link in sorted(ipr.link("dump"), key=lambda x: x["index"]):
            name = link.get("IFLA_IFNAME")
            for parent, prog in loader.tc_filters(ipr, name):
                if prog.startswith(loader.TC_FILTER_PREFIX):
                    steps.append(Step(f"tc filter on {name}", (f"tc filter on {name} parent {parent:#x}",),
                                      _detach_tc(name, parent)))
    return steps


def _detach_tc(ifname: str, parent: int) -> Callable[[], None]:
    return lambda: loader.detach_tc(ifname, parents=(parent,))


def _cgroup_steps(cgroups: Iterable[str]) -> list[Step]:
    # (name as the kernel keeps it, attach type): "sock_getpeername4" and "...6" are both cut to
    # "sock_getpeernam", the attach type tells them apart.
    ours = {(prog[:BPF_OBJ_NAME_LEN - 1], ATTACH_TYPES[at]) for prog, at in loader.CGROUP_PROGRAMS}
    steps = []
    for cg in cgroups:
        for at in sorted({at for _, at in ours}):
            try:
                ids = loader.cgroup_prog_ids(cg, at)
            except OSError:  # no such cgroup, or not cgroup v2
                continue
            for prog_id in ids:
                name = loader.prog_name(prog_id)
                if (name, at) in ours:  # only kproxy's: other agents' programs stay
                    steps.append(Step(f"bpf {name} on {cg}", (f"bpf cgroup program {name} (id {prog_id}, attach "
                                                             f"type {at}) on {cg}",),
                                      _detach_cgroup(cg, at, prog_id)))
    return steps


def _detach_cgroup(cgroup: str, attach_type: int, prog_id: int) -> Callable[[], None]:
    def run() -> None:
        loader.detach_cgroup_prog(cgroup, attach_type, prog_id)  # False: gone already, which is fine
    return run
