"""What runs in a lab, per node, and its logs: `knet lab status` and `knet lab logs`.

Components are the lab's daemons as lab.json records them (etcd, the API server, the controllers,
kdns and its DNS helpers and the ingress controller in or beside the control plane; per node the
CNI agent, the node agent, flannel-py, kproxy (or kube-proxy) and netpolicy), each with its pid,
log file and, where it has one, its health endpoint; plus the pods of kube-system and knet-system
when a control plane runs (what the kubelet would run: their state and restarts from the API).

State: "running" (the recorded pid is alive), "exited" (it is not), "unknown" (no pid recorded).
Health: the component's /healthz (etcd's /health), fetched from inside the lab namespace it
listens in (never from the root namespace); "ok", "fail: <why>", or "-" (no endpoint).
Restarts: the lab's own launchers restart nothing (yet), so "-" for daemons; a pod's is the sum
of its containers' restartCount.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from knet import netns

CONTROL_PLANE_NODE = "ctl"
POD_NAMESPACES = ("kube-system", "knet-system")
# Ports as the launchers bind them (lab/bringup: proxy.py/kube_proxy.py, netpol.py, ingress.py).
KPROXY_HEALTHZ, NETPOLICY_METRICS, INGRESS_METRICS = 10256, 9641, 10254


@dataclass
class Component:
    name: str                 # what `knet lab logs` takes: "kproxy", "etcd", "kube-system/kdns-..."
    node: str                 # "ctl" for the control plane's namespace, else the node's short name
    kind: str = "daemon"      # "daemon" or "pod"
    pid: int | None = None
    log: str | None = None
    netns: str | None = None  # where its health endpoint listens
    health_url: str | None = None
    state: str = "unknown"
    restarts: int | None = None
    health: str = "-"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def daemons(data: dict[str, Any]) -> list[Component]:
    """The lab's daemons from its lab.json (pure)."""
    state_dir = data.get("state_dir", "")
    ctl = (data.get("ctl") or {}).get("netns")
    ctl_ip = (data.get("ctl") or {}).get("ip")
    nodes = data.get("nodes") or {}
    out: list[Component] = []
    cp = data.get("control_plane")
    if cp:
        out.append(Component("etcd", CONTROL_PLANE_NODE, log=os.path.join(state_dir, "etcd", "etcd.log"),
                             netns=ctl, health_url="http://127.0.0.1:2379/health"))
        api = cp.get("apiserver") or {}
        out.append(Component("apiserver", CONTROL_PLANE_NODE, pid=api.get("pid"),
                             log=os.path.join(state_dir, "apiserver", "apiserver.log"), netns=ctl,
                             health_url=f"{api['lab_url']}/healthz" if api.get("lab_url") else None))
        c = cp.get("controllers") or {}
        out.append(Component("controllers", CONTROL_PLANE_NODE, pid=c.get("pid"), log=c.get("log"), netns=ctl,
                             health_url="http://127.0.0.1:10257/healthz"))
        for node, a in sorted((cp.get("agents") or {}).items()):
            out.append(Component("node-agent", node, pid=a.get("pid"), log=a.get("log")))
    for part, d in sorted((data.get("dns") or {}).items()):
        if isinstance(d, dict) and "pid" in d:
            out.append(Component("kdns" if part == "kdns" else f"{part}-dns", CONTROL_PLANE_NODE, pid=d.get("pid"),
                                 log=d.get("log")))
    ing = data.get("ingress")
    if isinstance(ing, dict) and ing.get("pid"):
        node = ing.get("node") or CONTROL_PLANE_NODE
        ip = (nodes.get(node) or {}).get("ip") or ctl_ip
        out.append(Component("ingress", node, pid=ing.get("pid"), log=ing.get("log"),
                             netns=(nodes.get(node) or {}).get("netns") or ctl,
                             health_url=f"http://{ip}:{INGRESS_METRICS}/healthz"))
    for short, n in sorted(nodes.items(), key=lambda kv: kv[1].get("index", 0)):
        ndir, nns, ip = n.get("dir") or os.path.join(state_dir, short), n.get("netns"), n.get("ip")
        if short in (data.get("agents") or {}):
            out.append(Component("cni-agent", short, pid=data["agents"][short],
                                 log=os.path.join(ndir, "cni-agent.log")))
        if os.path.exists(os.path.join(ndir, "flannel.log")):
            out.append(Component("flannel", short, pid=_flannel_pid(data, short),
                                 log=os.path.join(ndir, "flannel.log")))
        proxy = ((data.get("proxy") or {}).get("nodes") or {}).get(short)
        if proxy:
            name = "kube-proxy" if "kube-proxy" in os.path.basename(proxy.get("log") or "") else "kproxy"
            out.append(Component(name, short, pid=proxy.get("pid"), log=proxy.get("log"), netns=nns,
                                 health_url=f"http://{ip}:{KPROXY_HEALTHZ}/healthz"))
        pol = (data.get("netpolicy") or {}).get(short)
        if pol:
            out.append(Component("netpolicy", short, pid=pol.get("pid"), log=pol.get("log"), netns=nns,
                                 health_url=f"http://{ip}:{NETPOLICY_METRICS}/healthz"))
    return out


def _flannel_pid(data: dict[str, Any], short: str) -> int | None:
    pid = ((data.get("nodes") or {}).get(short) or {}).get("flannel_pid")
    return pid if isinstance(pid, int) else None


def pods(items: list[dict[str, Any]], node_names: dict[str, str]) -> list[Component]:
    """Components for the pods of the system namespaces (pure): `items` as the API lists them;
    `node_names`: Node name -> the lab's short name."""
    out = []
    for p in items:
        meta, spec, status = p.get("metadata") or {}, p.get("spec") or {}, p.get("status") or {}
        statuses = status.get("containerStatuses") or []
        waiting = [s["state"]["waiting"].get("reason", "") for s in statuses if "waiting" in (s.get("state") or {})]
        ready = next((c.get("status") == "True" for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                     False)
        phase = status.get("phase") or "Pending"
        node = spec.get("nodeName") or "-"
        out.append(Component(f"{meta.get('namespace')}/{meta.get('name')}", node_names.get(node, node), kind="pod",
                             state=waiting[0] if waiting else phase,
                             restarts=sum(int(s.get("restartCount") or 0) for s in statuses),
                             health="ready" if ready else "not ready"))
    return out


def _check_health(c: Component, run: Callable[..., subprocess.CompletedProcess]) -> str:
    if not c.health_url or not c.netns:
        return "-"
    proc = run(c.netns, ["curl", "-sk", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", c.health_url],
               timeout=5)
    code = (proc.stdout or "").strip()
    return "ok" if code == "200" else f"fail: {'no answer' if code in ('', '000') else 'HTTP ' + code}"


def observe(data: dict[str, Any], api: Any = None, run: Callable[..., subprocess.CompletedProcess] = netns.run,
            ) -> list[Component]:
    """Every component with its state and health now (`api`: a kubernetes ApiClient for the
    pods; None: daemons only)."""
    out = daemons(data)
    for c in out:
        c.state = "unknown" if not c.pid else ("running" if pid_alive(c.pid) else "exited")
        if c.state != "exited":
            try:
                c.health = _check_health(c, run)
            except (OSError, subprocess.TimeoutExpired) as e:
                c.health = f"fail: {e}"
            if c.state == "unknown" and c.health == "ok":
                c.state = "running"  # no pid recorded (etcd), but it answers
    if api is not None:
        from knet.kube import client
        names = {short: short for short in data.get("nodes") or {}}  # the lab's Nodes are named as its nodes
        for ns in POD_NAMESPACES:
            out += pods(client.list_objects(api, "Pod", ns)["items"], names)
    return out


def observe_lab(data: dict[str, Any]) -> list[Component]:
    """`observe` with the pods read through the lab's host kubeconfig (a loopback URL only: the
    root namespace never dials a lab address), when the lab has a control plane."""
    kubeconfig = (data.get("control_plane") or {}).get("kubeconfig")
    host_url = ((data.get("control_plane") or {}).get("apiserver") or {}).get("host_url", "")
    if not kubeconfig or not os.path.exists(kubeconfig) or not host_url.startswith("https://127.0.0.1:"):
        return observe(data)
    from knet.kube import client
    api = client.new_api_client(kubeconfig)
    try:
        return observe(data, api)
    except Exception as e:  # the API server is down: the daemons' table says so
        out = observe(data)
        out.append(Component("pods", CONTROL_PLANE_NODE, kind="pod", state="unknown", health=f"fail: {e}"[:80]))
        return out
    finally:
        api.close()


def rows(components: list[Component]) -> list[tuple[str, ...]]:
    """`knet lab status`'s components table, by node (the control plane first)."""
    out: list[tuple[str, ...]] = [("NODE", "COMPONENT", "KIND", "STATE", "RESTARTS", "HEALTH", "PID")]
    order = {CONTROL_PLANE_NODE: ""}
    for c in sorted(components, key=lambda c: (order.get(c.node, c.node), c.kind, c.name)):
        out.append((c.node, c.name, c.kind, c.state, "-" if c.restarts is None else str(c.restarts), c.health,
                    str(c.pid) if c.pid else "-"))
    return out


def as_json(components: list[Component]) -> list[dict[str, Any]]:
    return [asdict(c) for c in components]


# --- logs ----------------------------------------------------------------------------------------

class LogNotFound(LookupError):
    pass


def find_log(data: dict[str, Any], component: str, node: str | None = None) -> str:
    """The log file of `component` (a daemon's name, or ns/pod[/container] of a pod the lab's
    node agents run); `node` chooses among per-node daemons (the only one if there is one)."""
    found = [c for c in daemons(data) if c.name == component and c.log and (node is None or c.node == node)]
    if len(found) > 1:
        raise LogNotFound(f"{component} runs on {', '.join(c.node for c in found)}: say which with --node")
    if found:
        assert found[0].log is not None
        return found[0].log
    pod_logs = _pod_logs(data, component, node)
    if pod_logs:
        return pod_logs
    known = sorted({c.name for c in daemons(data) if c.log})
    raise LogNotFound(f"no component {component!r}{f' on {node}' if node else ''} "
                      f"(known: {', '.join(known)}, or NAMESPACE/POD[/CONTAINER])")


def _pod_logs(data: dict[str, Any], component: str, node: str | None) -> str | None:
    parts = component.split("/")
    if len(parts) not in (2, 3):
        return None
    ns, pod = parts[0], parts[1]
    container = parts[2] if len(parts) == 3 else "*"
    newest: tuple[float, str] | None = None
    for short, n in (data.get("nodes") or {}).items():
        if node is not None and short != node:
            continue
        pattern = os.path.join(n.get("dir") or "", "agent", "logs", f"{ns}_{pod}_*", container, "*.log")
        for path in glob.glob(pattern):
            mtime = os.path.getmtime(path)
            if newest is None or mtime > newest[0]:
                newest = (mtime, path)
    return newest[1] if newest else None


def tail(path: str, lines: int | None) -> list[str]:
    with open(path, errors="replace") as f:
        text = f.readlines()
    return text if lines is None else text[-lines:] if lines > 0 else []


def follow(path: str, stop: Callable[[], bool] = lambda: False, interval: float = 0.2) -> Iterator[str]:
    """Lines appended to `path` from now on (reopened from its start if it is replaced: rotated,
    or a restarted daemon's new file)."""
    start_at_end = True
    while not stop():
        with open(path, errors="replace") as f:
            if start_at_end:
                f.seek(0, os.SEEK_END)
            start_at_end = False
            inode = os.fstat(f.fileno()).st_ino
            while not stop():
                line = f.readline()
                if line:
                    yield line
                    continue
                try:
                    if os.stat(path).st_ino != inode:
                        break  # replaced: read the new file from its start
                except FileNotFoundError:
                    pass
                time.sleep(interval)
