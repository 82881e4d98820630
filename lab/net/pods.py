"""The lab's container runtime: a pod is a namespace with a pause process, wired by the node's
CNI conflist exactly as containerd/CRI-O would wire it (see `lab.net.cniexec`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from knet import cgroups, netns
from lab.errors import LabError
from lab.net import cniexec, kernel, state, topology

PAUSE = ["sleep", "infinity"]
_PORT_RE = re.compile(r"^(?:(?P<ip>[0-9.]+):)?(?P<host>\d+):(?P<ctr>\d+)(?:/(?P<proto>tcp|udp|sctp))?$")


class PodError(LabError):
    pass


def parse_port(spec: str) -> dict:
    """`[HOSTIP:]HOST:CONTAINER[/proto]` -> a CNI portMappings entry (pure)."""
    m = _PORT_RE.match(spec.strip().lower())
    if not m:
        raise PodError(f"invalid port mapping {spec!r}: expected HOST:CONTAINER[/tcp|udp|sctp]")
    host, ctr = int(m["host"]), int(m["ctr"])
    if not (0 < host < 65536 and 0 < ctr < 65536):
        raise PodError(f"invalid port mapping {spec!r}: ports must be 1..65535")
    entry = {"hostPort": host, "containerPort": ctr, "protocol": m["proto"] or "tcp"}
    if m["ip"]:
        entry["hostIP"] = m["ip"]
    return entry


def pod_key(namespace: str, pod: str) -> str:
    return f"{namespace}/{pod}"


def first_ip(result: dict) -> str | None:
    for entry in result.get("ips") or []:
        addr = entry.get("address", "")
        if addr:
            return addr.split("/")[0]
    return None


def host_veth(result: dict, bridge: str = "cni0") -> str | None:
    """The node-side end of the pod's veth: the result's non-sandbox interface besides the bridge."""
    for iface in result.get("interfaces") or []:
        if not iface.get("sandbox") and iface.get("name") not in (None, "", bridge):
            return iface["name"]
    return None


def _node(data: dict, node: str) -> tuple[str, dict]:
    nodes = data["nodes"]
    key = node if node in nodes else f"node{node}"
    if key not in nodes:
        raise PodError(f"lab {data['name']} has no node {node!r} (nodes: {', '.join(sorted(nodes))})")
    return key, nodes[key]


def _conflist(node: dict) -> dict:
    with open(node["conflist"]) as f:
        return json.load(f)


def _runtime_conf(lab: str, namespace: str, pod: str, ports: list[dict]) -> cniexec.RuntimeConf:
    cid = topology.container_id(lab, namespace, pod)
    caps = {"portMappings": ports} if ports else {}
    return cniexec.RuntimeConf(container_id=cid, netns=netns.path(topology.pod_netns(lab, namespace, pod)),
                               ifname="eth0", args=cniexec.k8s_args(namespace, pod, cid),
                               capability_args=caps)


def _node_cgroup(lab: str, node_key: str) -> str | None:
    """The node's pod cgroup (made on demand): kproxy's eBPF hooks see the processes in it."""
    path = kernel.node_cgroup(lab, node_key)
    return cgroups.ensure(path) if path else None


def sandbox_add(lab: str, node_key: str, node_info: dict, pod: str, namespace: str = "default",
                ports: list[dict] | None = None, exec_netns: str | None = "node") -> dict:
    """The runtime's RunPodSandbox: the pod's namespace held by a pause process, wired by the
    node's CNI conflist. Returns the pod record (not yet in lab.json); on failure nothing is left.

    `exec_netns` is where the plugins run: "node" (the node's namespace, for a caller in the root
    namespace) or None (the caller's own, e.g. the node agent, which lives in the node)."""
    key = pod_key(namespace, pod)
    podns = topology.pod_netns(lab, namespace, pod)
    try:
        netns.create(podns)  # the atomic claim: a concurrent add of the same pod fails here
    except FileExistsError:
        raise PodError(f"pod {key}: namespace {podns} already exists") from None
    ports = list(ports or [])
    rt = _runtime_conf(lab, namespace, pod, ports)
    where = node_info["netns"] if exec_netns == "node" else exec_netns
    try:
        pause = netns.spawn(podns, PAUSE, cgroup=_node_cgroup(lab, node_key))
        t0 = time.monotonic()
        try:
            conflist = _conflist(node_info)
            result = cniexec.add_list(conflist, rt, exec_netns=where)
        except cniexec.CniExecError as e:
            raise PodError(f"pod {key}: CNI ADD failed: {e}") from e
        except (OSError, ValueError) as e:
            raise PodError(f"pod {key}: cannot read the CNI configuration {node_info['conflist']}: {e}") from e
    except BaseException:
        netns.delete(podns)  # add_list already ran DEL for a failed ADD
        raise
    return {
        "node": node_key, "namespace": namespace, "name": pod, "netns": podns,
        "container_id": rt.container_id, "ip": first_ip(result), "result": result,
        "host_veth": host_veth(result, conflist["plugins"][0].get("bridge", "cni0")),
        "ports": ports, "pids": {"pause": pause.pid},
        "cni_add_ms": round((time.monotonic() - t0) * 1000, 1),
    }


def sandbox_del(lab: str, node_info: dict, pod: str, namespace: str = "default", record: dict | None = None,
                exec_netns: str | None = "node") -> cniexec.CniExecError | None:
    """The runtime's StopPodSandbox + RemovePodSandbox: CNI DEL (reverse order, the cached result as
    prevResult), then the namespace and every process in it. Returns DEL's error, if any (the
    namespace is removed regardless, so nothing leaks on our side)."""
    rt = _runtime_conf(lab, namespace, pod, (record or {}).get("ports", []))
    where = node_info["netns"] if exec_netns == "node" else exec_netns
    error: cniexec.CniExecError | None = None
    try:
        cniexec.del_list(_conflist(node_info), rt, (record or {}).get("result"), exec_netns=where)
    except cniexec.CniExecError as e:
        error = e
    except (OSError, ValueError) as e:
        error = cniexec.CniExecError("?", "DEL", 1, f"cannot read the CNI configuration: {e}")
    netns.delete(topology.pod_netns(lab, namespace, pod))
    return error


def add(lab: str, node: str, pod: str, namespace: str = "default", cmd: str | None = None,
        ports: list[dict] | None = None, root: str = topology.STATE_ROOT) -> dict:
    """Create the pod's namespace and pause process, run CNI ADD, record it in lab.json."""
    topology.validate_label("pod name", pod)
    topology.validate_label("namespace", namespace)
    data = state.load(lab, root)
    node_key, node_info = _node(data, node)
    key = pod_key(namespace, pod)
    if key in data["pods"]:
        raise PodError(f"pod {key} already exists on {data['pods'][key]['node']}")
    record = sandbox_add(lab, node_key, node_info, pod, namespace, ports)
    try:
        if cmd:
            log = os.path.join(state_dir_pods(lab, root), f"{namespace}-{pod}.log")
            proc = netns.spawn(record["netns"], ["sh", "-c", cmd], log_path=log, cgroup=_node_cgroup(lab, node_key))
            record["cmd"] = cmd
            record["log"] = log
            record["pids"]["cmd"] = proc.pid
        with state.update(lab, root) as d:
            d["pods"][key] = record
        return record
    except BaseException:
        with contextlib.suppress(cniexec.CniExecError):
            sandbox_del(lab, node_info, pod, namespace, record)
        raise


def state_dir_pods(lab: str, root: str = topology.STATE_ROOT) -> str:
    d = os.path.join(topology.state_dir(lab, root), "pods")
    os.makedirs(d, exist_ok=True)
    return d


def find(data: dict, pod: str, namespace: str = "default") -> dict | None:
    return data["pods"].get(pod_key(namespace, pod))


def delete(lab: str, pod: str, namespace: str = "default", node: str | None = None,
           root: str = topology.STATE_ROOT) -> dict | None:
    """CNI DEL (reverse order, cached result as prevResult), then kill the pod's processes and
    remove its namespace. A pod left half-made by a crash (namespace but no record) is cleaned
    up too when its node is given. Returns the removed record (None if there was none)."""
    data = state.load(lab, root)
    key = pod_key(namespace, pod)
    record = data["pods"].get(key)
    if record is None and node in (None, "-"):
        if not netns.exists(topology.pod_netns(lab, namespace, pod)):
            raise PodError(f"pod {key} not found in lab {lab}")
        raise PodError(f"pod {key} is not recorded; give its node to clean it up")
    node_key, node_info = _node(data, record["node"] if record else node)
    if record and node not in (None, "-") and _node(data, node)[0] != node_key:
        raise PodError(f"pod {key} is on {node_key}, not {node}")
    error = sandbox_del(lab, node_info, pod, namespace, record)
    with state.update(lab, root) as d:
        d["pods"].pop(key, None)
    if error:
        raise PodError(f"pod {key} removed, but CNI DEL reported: {error}") from error
    return record
