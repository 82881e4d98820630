"""`knet uninstall-node`: remove everything knet put on a node, after `kubectl delete -k deploy/`.

    knet uninstall-node --dry-run        # print what would be removed
    knet uninstall-node --yes            # remove it

What is removed (all in the calling process's network namespace, files under --root):
  links      cni0, flannel.<VNI> (vxlan), the host ends of pod veths attached to cni0; their routes,
             neighbours and FDB entries go with them
  routes     remaining routes into the cluster Network (flannel host-gw: `<subnet> via <node>`)
  iptables   chains KUBE-*, CNI-*, FLANNEL-* in every table (iptables and ip6tables) and the rules
             jumping to them; kubelet's own KUBE-FIREWALL / KUBE-KUBELET-CANARY / KUBE-IPTABLES-HINT
             stay (kubelet owns and recreates them)
  nftables   netpolicy's table `inet knet-netpol`
  bpf        kproxy's tc filters (name knet-*, on any link) and their clsact qdisc when nothing else
             is on it; kproxy's cgroup programs on --cgroup (default: the kubepods cgroup)
  files      /opt/cni/bin/knet-cni{,.d}, conflists naming knet-cni in /etc/cni/net.d,
             /run/flannel/subnet.env, /var/lib/cni/networks/<network> (IPAM), libcni's cached
             results of the network, /run/knet (agent socket)

Not touched: sysctls (ip_forward stays on: kubelet and other workloads rely on it), conntrack
entries (they expire), flannel's lease in etcd (it expires after its TTL; or delete
<prefix>/subnets/<subnet> with etcdctl), kernel modules.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import glob
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

OUR_CHAIN = re.compile(r"^(KUBE-|CNI-|FLANNEL-)")
KUBELET_CHAINS = {"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"}
NFT_TABLE = ("inet", "knet-netpol")
# kproxy's cgroup programs (kproxy/ebpf/loader.py CGROUP_PROGRAMS; kernel names are cut to 15
# chars) and the kernel's bpf_attach_type numbers of their hooks (uapi, stable).
CGROUP_PROGRAMS = {"sock_connect4", "sock_sendmsg4", "sock_recvmsg4", "sock_getpeernam"}
CGROUP_ATTACH_TYPES = (10, 14, 19, 29)  # INET4_CONNECT, UDP4_SENDMSG, UDP4_RECVMSG, INET4_GETPEERNAME
DEFAULT_CGROUP = "/sys/fs/cgroup/kubepods.slice"


@dataclass
class Plan:
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    iptables: dict[str, str] = field(default_factory=dict)  # command -> iptables-restore input
    nft: bool = False
    tc: list[tuple[str, int]] = field(default_factory=list)  # (link, parent)
    cgroup: list[tuple[str, int, int, str]] = field(default_factory=list)  # (cgroup, attach type, id, name)
    files: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        out = [f"link {n}" for n in self.links] + [f"route {r}" for r in self.routes]
        for cmd, script in self.iptables.items():
            out += [f"{cmd}: {line}" for line in script.splitlines() if line.startswith(("-D", "-X", "*"))]
        out += [f"nft table {' '.join(NFT_TABLE)}"] if self.nft else []
        out += [f"tc filter on {link} parent {parent:#x}" for link, parent in self.tc]
        out += [f"bpf cgroup program {name} (id {pid}, attach type {at}) on {cg}" for cg, at, pid, name in self.cgroup]
        return out + [f"file {f}" for f in self.files]


# --- pure: iptables ------------------------------------------------------------------------------

def iptables_cleanup(save: str) -> str:
    """iptables-restore --noflush input removing our chains from `iptables-save` output: first the
    rules in other chains that jump to ours, then flush, then delete (a chain can only go once
    nothing refers to it)."""
    out: list[str] = []
    table, ours, deletes = None, [], []

    def flush() -> None:
        if table and ours:
            out.extend([f"*{table}", *deletes, *(f"-F {c}" for c in ours), *(f"-X {c}" for c in ours), "COMMIT"])

    for line in save.splitlines():
        if line.startswith("*"):
            table, ours, deletes = line[1:].strip(), [], []
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if OUR_CHAIN.match(chain) and chain not in KUBELET_CHAINS:
                ours.append(chain)
        elif line.startswith("-A "):
            parts = line.split()
            chain = parts[1]
            target = parts[parts.index("-j") + 1] if "-j" in parts else (parts[parts.index("-g") + 1] if "-g" in parts
                                                                          else None)
            if chain not in ours and target in ours:
                deletes.append("-D" + line[2:])
        elif line.strip() == "COMMIT":
            flush()
            table = None
    return "\n".join(out) + ("\n" if out else "")


# --- discovery -----------------------------------------------------------------------------------

def _links_and_routes(plan: Plan, network: ipaddress.IPv4Network | None, bridge: str) -> None:
    from knet import links

    with links.iproute() as ipr:
        by_index = {link["index"]: link for link in ipr.link("dump")}
        names = {i: link.get("IFLA_IFNAME") for i, link in by_index.items()}
        br = next((i for i, n in names.items() if n == bridge), None)
        for i, link in sorted(by_index.items()):
            name = names[i]
            info = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if name == bridge or (name.startswith("flannel.") and info == "vxlan") or \
                    (info == "veth" and br is not None and link.get("IFLA_MASTER") == br):
                plan.links.append(name)
        gone = {i for i, n in names.items() if n in plan.links}
        if network is not None:
            for r in ipr.route("dump", family=2, table=254):
                dst, plen = r.get("RTA_DST"), r["dst_len"]
                if dst and r.get("RTA_OIF") not in gone and \
                        ipaddress.ip_network(f"{dst}/{plen}", strict=False).subnet_of(network):
                    via = r.get("RTA_GATEWAY")
                    plan.routes.append(f"{dst}/{plen}" + (f" via {via}" if via else "") +
                                       f" dev {names.get(r.get('RTA_OIF'), '?')}")
        _tc(plan, ipr, names)


def _tc(plan: Plan, ipr, names: dict[int, str]) -> None:
    from kproxy.ebpf.loader import TC_EGRESS, TC_INGRESS
    for idx, name in sorted(names.items()):
        for parent in (TC_INGRESS, TC_EGRESS):
            try:
                flts = ipr.get_filters(index=idx, parent=parent)
            except Exception:  # no clsact qdisc: nothing of ours
                continue
            if any(str(f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") or "").startswith("knet-") for f in flts):
                plan.tc.append((name, parent))


def _cgroups(plan: Plan, cgroups: list[str]) -> None:
    from kproxy.ebpf import loader
    for cg in cgroups:
        if not os.path.isdir(cg):
            continue
        for at in CGROUP_ATTACH_TYPES:
            try:
                ids = loader.cgroup_prog_ids(cg, at)
            except OSError:
                continue
            for pid in ids:
                name = _prog_name(pid)
                if name in CGROUP_PROGRAMS:  # only kproxy's: other agents' programs stay
                    plan.cgroup.append((cg, at, pid, name))


def _prog_name(prog_id: int) -> str:
    from kproxy.ebpf import loader
    try:
        fd = loader._fd_by_id(loader._BPF_PROG_GET_FD_BY_ID, prog_id)
    except OSError:
        return ""
    try:
        info = (ct.c_uint8 * 256)()
        loader._obj_info(fd, info)
        return bytes(info[64:80]).split(b"\0", 1)[0].decode(errors="replace")  # bpf_prog_info.name
    finally:
        os.close(fd)


def _files(plan: Plan, root: str, network_name: str) -> None:
    def at(p: str) -> str:
        return os.path.join(root, p.lstrip("/"))

    candidates = [at("/opt/cni/bin/knet-cni"), at("/opt/cni/bin/knet-cni.d"), at("/run/flannel/subnet.env"),
                  at(f"/var/lib/cni/networks/{network_name}"), at("/run/knet")]
    candidates += glob.glob(at(f"/var/lib/cni/results/{network_name}-*"))
    for conf in sorted(glob.glob(at("/etc/cni/net.d/*"))):
        try:
            with open(conf) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        plugins = data.get("plugins", [data]) if isinstance(data, dict) else []
        if any(isinstance(p, dict) and p.get("type") == "knet-cni" for p in plugins):
            candidates.append(conf)
    plan.files = [c for c in candidates if os.path.lexists(c)]


def _cluster_network(root: str, given: str | None) -> ipaddress.IPv4Network | None:
    if given:
        return ipaddress.IPv4Network(given)
    try:
        with open(os.path.join(root, "run/flannel/subnet.env")) as f:
            for line in f:
                if line.startswith("FLANNEL_NETWORK="):
                    return ipaddress.IPv4Network(line.split("=", 1)[1].strip())
    except (OSError, ValueError):
        pass
    return None


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan()
    _links_and_routes(plan, _cluster_network(args.root, args.cluster_cidr), args.bridge)
    for cmd in ("iptables", "ip6tables"):
        if shutil.which(f"{cmd}-save"):
            save = subprocess.run([f"{cmd}-save"], capture_output=True, text=True).stdout
            script = iptables_cleanup(save)
            if script:
                plan.iptables[cmd] = script
    if shutil.which("nft"):
        plan.nft = subprocess.run(["nft", "list", "table", *NFT_TABLE], capture_output=True).returncode == 0
    _cgroups(plan, args.cgroup)
    _files(plan, args.root, args.network_name)
    return plan


# --- apply ---------------------------------------------------------------------------------------

def apply(plan: Plan) -> list[str]:
    """Remove what the plan lists; returns the errors (each step goes on regardless)."""
    from knet import links
    from kproxy.ebpf.loader import TC_HANDLE, TC_PRIO
    errors: list[str] = []
    with links.iproute() as ipr:
        for name, parent in plan.tc:
            try:
                ipr.tc("del-filter", "bpf", links.index(ipr, name), TC_HANDLE, parent=parent, prio=TC_PRIO)
            except Exception as e:
                errors.append(f"tc filter on {name}: {e}")
        for name in {n for n, _ in plan.tc}:
            idx = links.index(ipr, name)
            if idx is not None and not _any_filter(ipr, idx):
                try:
                    ipr.tc("del", "clsact", idx)
                except Exception as e:
                    errors.append(f"clsact on {name}: {e}")
        for name in plan.links:  # veths first would not matter: deleting either end removes both
            idx = links.index(ipr, name)
            if idx is not None:
                try:
                    ipr.link("del", index=idx)
                except Exception as e:
                    errors.append(f"link {name}: {e}")
    for route in plan.routes:
        r = subprocess.run(["ip", "route", "del", *route.split()], capture_output=True, text=True)
        if r.returncode:
            errors.append(f"route {route}: {r.stderr.strip()}")
    for cmd, script in plan.iptables.items():
        r = subprocess.run([f"{cmd}-restore", "-w", "5", "--noflush"], input=script, capture_output=True, text=True)
        if r.returncode:
            errors.append(f"{cmd}-restore: {r.stderr.strip()}")
    if plan.nft:
        r = subprocess.run(["nft", "delete", "table", *NFT_TABLE], capture_output=True, text=True)
        if r.returncode:
            errors.append(f"nft: {r.stderr.strip()}")
    for cg, at, pid, name in plan.cgroup:
        try:
            _detach(cg, at, pid)
        except OSError as e:
            errors.append(f"bpf {name} on {cg}: {e}")
    for path in plan.files:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as e:
            errors.append(f"file {path}: {e}")
    return errors


def _any_filter(ipr, idx: int) -> bool:
    from kproxy.ebpf.loader import TC_EGRESS, TC_INGRESS
    for parent in (TC_INGRESS, TC_EGRESS):
        try:
            if ipr.get_filters(index=idx, parent=parent):
                return True
        except Exception:
            continue
    return False


def _detach(cgroup: str, attach_type: int, prog_id: int) -> None:
    from kproxy.ebpf import loader
    prog_fd = loader._fd_by_id(loader._BPF_PROG_GET_FD_BY_ID, prog_id)
    try:
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            attr = (ct.c_uint8 * 16)()
            for off, val in ((0, cg), (4, prog_fd), (8, attach_type)):
                loader._put_u32(attr, off, val)
            loader._bpf(loader._BPF_PROG_DETACH, attr)
        finally:
            os.close(cg)
    finally:
        os.close(prog_fd)


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
    if want is not None:
        from knet import netns
        if netns.inode(want) != netns.inode():
            raise SystemExit(f"knet uninstall-node: not in network namespace {want}: refusing")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.yes and not args.dry_run:
        print("knet uninstall-node removes knet's links, routes, iptables/nftables rules, BPF programs and "
              "files from this node; run with --dry-run to see them, --yes to do it", file=sys.stderr)
        return 2
    if args.cgroup is None:
        args.cgroup = [DEFAULT_CGROUP] if os.path.abspath(args.root) == "/" else []
    _guard()
    plan = make_plan(args)
    for line in plan.describe():
        print(("would remove " if args.dry_run else "removing ") + line)
    if args.dry_run:
        return 0
    errors = apply(plan)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    leftover = make_plan(args).describe()
    for line in leftover:
        print(f"still present: {line}", file=sys.stderr)
    return 1 if errors or leftover else 0


if __name__ == "__main__":
    sys.exit(main())
