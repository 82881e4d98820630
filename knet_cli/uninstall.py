"""`knet uninstall-node`: remove everything knet put on a node, after `kubectl delete -k deploy/`.

    knet uninstall-node --dry-run        # print what would be removed
    knet uninstall-node --yes            # remove it

What is removed (all in the calling process's network namespace, files under --root); each
component says what is its own (`<component>/uninstall.py`), this command only composes them:
  kproxy     tc filters (name knet-*, on any link) and their clsact qdisc when nothing else is on
             it; iptables chains KUBE-* in every table (iptables and ip6tables) and the rules
             jumping to them, except kubelet's own KUBE-FIREWALL / KUBE-KUBELET-CANARY /
             KUBE-IPTABLES-HINT (kubelet owns and recreates them); its cgroup programs on --cgroup
             (default: the kubepods cgroup); the nftables mode's table `ip kube-proxy`
  netpolicy  the nftables table `inet knet-netpol`
  flannel_py flannel.<VNI> (vxlan) with its routes, neighbours and FDB entries; remaining static
             routes into the cluster Network (host-gw: `<subnet> via <node>`); chains FLANNEL-*;
             /run/flannel/subnet.env
  cni        cni0 and the host ends of pod veths attached to it; chains CNI-*;
             /opt/cni/bin/knet-cni{,.d}, conflists naming knet-cni in /etc/cni/net.d,
             /var/lib/cni/networks/<network> (IPAM), libcni's cached results of the network,
             /run/knet (agent socket)

Not touched: sysctls (ip_forward stays on: kubelet and other workloads rely on it), conntrack
entries (they expire), flannel's lease in etcd (it expires after its TTL; or delete
<prefix>/subnets/<subnet> with etcdctl), kernel modules.
"""

from __future__ import annotations

import argparse
import os
import sys

from cni import uninstall as cni_uninstall
from flannel_py import uninstall as flannel_uninstall
from knet import netns
from knet.uninstall import Step
from kproxy import uninstall as kproxy_uninstall
from netpolicy import uninstall as netpolicy_uninstall

DEFAULT_CGROUP = "/sys/fs/cgroup/kubepods.slice"


def plan(args: argparse.Namespace) -> list[Step]:
    """Every component's steps. kproxy's tc filters go before any link; the rest is independent."""
    return [*kproxy_uninstall.uninstall_steps(args.cgroup),
            *netpolicy_uninstall.uninstall_steps(),
            *flannel_uninstall.uninstall_steps(args.root, args.cluster_cidr),
            *cni_uninstall.uninstall_steps(args.root, args.bridge, args.network_name)]


def apply(steps: list[Step]) -> list[str]:
    """Run every step; returns the errors (each step runs regardless of the others)."""
    errors = []
    for step in steps:
        try:
            step.run()
        except Exception as e:  # any failure is reported and the rest still goes
            errors.append(f"{step.label}: {e}")
    return errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knet uninstall-node", description=__doc__.splitlines()[0])
    p.add_argument("--yes", action="store_true", help="really remove (required unless --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed and exit")
    p.add_argument("--root", default="/", help="prefix of the node's files (a mounted host root)")
    p.add_argument("--cgroup", action="append", default=None,
                   help=f"cgroup v2 dir to remove kproxy's programs from (default {DEFAULT_CGROUP} when --root "
                        "is /; repeatable)")
    p.add_argument("--cluster-cidr", default=None, help="the pod network (default: FLANNEL_NETWORK of subnet.env)")
    p.add_argument("--bridge", default="cni0")
    p.add_argument("--network-name", default="knet", help="the conflist's name (IPAM and result dirs)")
    return p


def _guard() -> None:
    """Tests set KNET_UNINSTALL_NETNS to the lab namespace they mean: refuse anywhere else, so a
    mistake in a test can never clean up the machine running it."""
    want = os.environ.get("KNET_UNINSTALL_NETNS")
    if want is not None and netns.inode(want) != netns.inode():
        raise SystemExit(f"knet uninstall-node: not in network namespace {want}: refusing")


def _lines(steps: list[Step]) -> list[str]:
    return [line for step in steps for line in step.lines]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.yes and not args.dry_run:
        print("knet uninstall-node removes knet's links, routes, iptables/nftables rules, BPF programs and "
              "files from this node; run with --dry-run to see them, --yes to do it", file=sys.stderr)
        return 2
    if args.cgroup is None:
        args.cgroup = [DEFAULT_CGROUP] if os.path.abspath(args.root) == "/" else []
    _guard()
    steps = plan(args)
    for line in _lines(steps):
        print(("would remove " if args.dry_run else "removing ") + line)
    if args.dry_run:
        return 0
    errors = apply(steps)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    leftover = _lines(plan(args))
    for line in leftover:
        print(f"still present: {line}", file=sys.stderr)
    return 1 if errors or leftover else 0


if __name__ == "__main__":
    sys.exit(main())
