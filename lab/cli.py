"""The lab's subcommands of the `knet` command line (its public entry point for the CLI):

    knet lab up | down | list | status | logs | kubeconfig | agent-restart | pod add | pod del | exec

Thin: the work is in `lab.api`. `register(subparsers)` adds `lab ...`; every handler returns the
exit code, and a failure the user can act on raises a `lab.errors.LabError`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lab import api, observe
from lab.bringup import controlplane, demo, flanneld, kube_proxy
from lab.net import state

DEFAULT_LAB = os.environ.get("KNET_LAB", "knet")


def _say(msg: str) -> None:
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        # `knet lab up | head`: the reader left, the work goes on (and must not be half done).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _err(msg: str) -> None:
    print(f"knet: {msg}", file=sys.stderr, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    lab = api.up(args.name, args.nodes, cni_type=args.cni_type, recreate=args.recreate, progress=_say,
                 overlay=args.overlay, subnet_manager=args.subnet_manager,
                 control_plane=False if args.no_control_plane else args.control_plane,
                 proxy_mode=None if args.no_control_plane or args.proxy_mode == "none" else args.proxy_mode,
                 network_policy=not args.no_control_plane and not args.no_network_policy,
                 ingress=not args.no_control_plane and not args.no_ingress, ip_family=args.ip_family,
                 flannel=args.flannel)
    if args.demo:
        return 0 if demo.run(lab, _say) else 1
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    data = state.load(args.name)
    path = (data.get("control_plane") or {}).get("kubeconfig") or controlplane.kubeconfig_path(args.name)
    if not os.path.exists(path):
        _err(f"lab {args.name} has no control plane (knet lab up without --no-control-plane)")
        return 1
    print(path)
    return 0


def cmd_agent_restart(args: argparse.Namespace) -> int:
    pid = controlplane.restart_agent(args.name, args.node if args.node.startswith("node") else f"node{args.node}")
    print(f"node agent on {args.node} restarted (pid {pid}); it adopts the node's pods")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    removed = api.down(args.name, progress=_say)
    if not removed:
        _say(f"lab {args.name}: nothing to remove")
    return 0


def cmd_list(_args: argparse.Namespace) -> int:
    for name in api.list_labs():
        tag = "" if state.exists(name) else "  (leftovers, no lab.json: knet lab down --name " + name + ")"
        print(name + tag)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data = api.status(args.name)
    components = observe.observe_lab(data)
    data["components"] = observe.as_json(components)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    manager = f" ({data['subnet_manager']} subnet manager)" if data.get("subnet_manager") else ""
    manager += f" {flanneld.describe(data['flanneld_nodes'])}" if data.get("flanneld_nodes") else ""
    print(f"lab {data['name']}  overlay {data.get('overlay', '?')}{manager}  cni {data.get('cni_type', '?')}  "
          f"state {data['state_dir']}")
    print(f"  ctl {data['ctl']['ip']} ({data['ctl']['netns']})   "
          f"client {data['client']['ip']} ({data['client']['netns']})")
    cp = data.get("control_plane")
    if cp:
        print(f"  apiserver {cp['apiserver']['lab_url']} (host {cp['apiserver']['host_url']})   "
              f"kubectl --kubeconfig {cp['kubeconfig']} get nodes,pods -o wide")
    rows: list[tuple[str, ...]] = [("NODE", "NETNS", "IP", "POD SUBNET", "NS", "AGENT")]
    for short, n in sorted(data["nodes"].items(), key=lambda kv: kv[1]["index"]):
        rows.append((short, n["netns"], n["ip"], n["pod_subnet"], "up" if n["up"] else "MISSING",
                     "up" if n["agent"] else "-"))
    _table(rows)
    if data["pods"]:
        rows = [("POD", "NODE", "IP", "NETNS", "NS")]
        for key, p in sorted(data["pods"].items()):
            rows.append((key, p["node"], p.get("ip") or "-", p["netns"], "up" if p["up"] else "MISSING"))
        print()
        _table(rows)
    else:
        print("no pods (knet lab pod add node1 NAME)")
    if components:
        print()
        _table(observe.rows(components))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    data = api.status(args.name)
    try:
        path = observe.find_log(data, args.component, args.node)
        for line in observe.tail(path, args.tail):
            sys.stdout.write(line)
        sys.stdout.flush()
        if args.follow:
            for line in observe.follow(path):
                sys.stdout.write(line)
                sys.stdout.flush()
    except observe.LogNotFound as e:
        _err(f"logs: {e.args[0]}")
        return 1
    except FileNotFoundError as e:
        _err(f"logs: {e.filename}: no such file (the component has not logged yet?)")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def cmd_pod_add(args: argparse.Namespace) -> int:
    rec = api.get(args.name).add_pod(args.node, args.pod, args.namespace, args.cmd, args.port)
    print(f"pod {args.namespace}/{args.pod} on {rec['node']}: {rec['ip']} (netns {rec['netns']}, "
          f"container {rec['container_id'][:12]}, CNI ADD {rec['cni_add_ms']:.0f} ms)")
    return 0


def cmd_pod_del(args: argparse.Namespace) -> int:
    api.get(args.name).del_pod(args.pod, args.namespace, None if args.node == "-" else args.node)
    print(f"pod {args.namespace}/{args.pod} deleted")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _err("exec: no command given (knet lab exec TARGET -- CMD ...)")
        return 2
    proc = api.get(args.name).exec(args.target, argv, args.namespace, capture_output=False)
    return proc.returncode


def register(subparsers: Any) -> None:
    """Add `lab ...` to the CLI's subparsers; each handler is set as `func`."""
    lab = subparsers.add_parser("lab", help="the one-machine lab (network namespaces)")
    labsub = lab.add_subparsers(dest="lab_command", required=True)

    def named(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB}; env KNET_LAB)")
        return sp

    up = named(labsub.add_parser("up", help="create the lab"))
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--demo", action="store_true", help="add pods and ping across them")
    up.add_argument("--cni-type", default="knet-cni", help="CNI plugin type in the conflist (e.g. bridge)")
    up.add_argument("--recreate", action="store_true", help="remove an existing lab of that name first")
    up.add_argument("--overlay", choices=["vxlan", "host-gw", "static"],
                    default=os.environ.get("KNET_LAB_OVERLAY", "vxlan"),
                    help="pod network between nodes: flannel_py vxlan (default) or host-gw, or static "
                         "subnets and routes (no flannel)")
    up.add_argument("--ip-family", choices=["ipv4", "ipv6", "dual"], default="ipv4",
                    help="the cluster's IP families: ipv4 (default), or dual (IPv4 primary; underlay fd00:33::/64, "
                         "pods fd00:10:244::/56, services fd00:10:96::/112 beside the IPv4 ranges); ipv6 alone is "
                         "refused (flannel-py has no IPv6-only overlay)")
    up.add_argument("--subnet-manager", choices=["kube", "etcd"], default=os.environ.get("KNET_LAB_SUBNET_MANAGER"),
                    help="where flannel_py gets each node's subnet: kube (default) = the Node's podCIDR from the "
                         "node IPAM controller, leases as Node annotations, as kube-flannel; etcd = leases in the "
                         "lab's etcd (the default with --no-control-plane)")
    up.add_argument("--flannel", default=os.environ.get("KNET_LAB_FLANNEL", "py"), metavar=flanneld.CHOICES,
                    help="py (default): flannel-py on every node; real: upstream flanneld (.anchors/bin, "
                         "scripts/install-anchors) on every node; real:N: flanneld on the last N nodes, flannel-py "
                         "on the others, one subnet manager (either)")
    up.add_argument("--proxy-mode", choices=["iptables", "userspace", "ebpf", "nftables", *kube_proxy.MODES, "none"],
                    default=os.environ.get("KNET_PROXY_MODE", "iptables"),
                    help="kproxy data path on every node (needs the control plane); kube-proxy-*: upstream "
                         "kube-proxy in that mode instead (.anchors/bin, scripts/install-anchors)")
    up.add_argument("--no-network-policy", action="store_true", help="do not run the netpolicy daemons")
    up.add_argument("--no-ingress", action="store_true", help="do not run the ingress controller")
    up.add_argument("--control-plane", choices=["lab", "real"], default="lab",
                    help="lab: knet-apiserver and knet-controllers; real: the upstream kube-apiserver and "
                         "kube-controller-manager (.anchors/bin, scripts/install-anchors) with the lab's scheduler "
                         "and LoadBalancer pool, knet's daemons on deploy/rbac.yaml's ServiceAccounts")
    up.add_argument("--no-control-plane", action="store_true",
                    help="only the network: no etcd/API server/controllers/node agents (pods via `knet lab pod`)")
    up.set_defaults(func=cmd_up)
    named(labsub.add_parser("kubeconfig", help="print the path of the lab's admin kubeconfig")).set_defaults(
        func=cmd_kubeconfig)
    ar = named(labsub.add_parser("agent-restart", help="restart a node's agent (it adopts the running pods)"))
    ar.add_argument("node")
    ar.set_defaults(func=cmd_agent_restart)

    named(labsub.add_parser("down", help="remove the lab (also leftovers of a crash)")).set_defaults(func=cmd_down)
    labsub.add_parser("list", help="list labs").set_defaults(func=cmd_list)
    st = named(labsub.add_parser("status", help="nodes and pods"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    lg = named(labsub.add_parser("logs", help="a component's log (kproxy, etcd, ..., or NAMESPACE/POD[/CONTAINER])"))
    lg.add_argument("component")
    lg.add_argument("--node", help="the node of a per-node component (node1, ...; ctl: the control plane)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing what it logs")
    lg.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines")
    lg.set_defaults(func=cmd_logs)

    pod = labsub.add_parser("pod", help="add or delete pods")
    podsub = pod.add_subparsers(dest="pod_command", required=True)
    add = named(podsub.add_parser("add", help="create a pod on a node (runs the node's CNI conflist)"))
    add.add_argument("node", help="node1, node2, ... (or 1, 2, ...)")
    add.add_argument("pod")
    add.add_argument("--namespace", default="default")
    add.add_argument("--cmd", help="shell command to run inside the pod's namespace")
    add.add_argument("--port", action="append", default=[], metavar="HOST:CONTAINER[/PROTO]",
                     help="port mapping (portmap plugin); repeatable")
    add.set_defaults(func=cmd_pod_add)
    rm = named(podsub.add_parser("del", help="delete a pod"))
    rm.add_argument("node", help="its node, or - to look it up")
    rm.add_argument("pod")
    rm.add_argument("--namespace", default="default")
    rm.set_defaults(func=cmd_pod_del)

    ex = named(labsub.add_parser("exec", help="run a command inside a node, pod, client or ctl"))
    ex.add_argument("--namespace", default="default", help="pod namespace")
    ex.add_argument("target", help="node1 | POD | NAMESPACE/POD | client | ctl | underlay")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

