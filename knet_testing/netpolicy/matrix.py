"""The reachability matrix (pure part): the upstream e2e topology as model objects, the expected
truth table from the reference evaluator, and the side-by-side rendering of two tables.

Topology (as in the upstream network policy e2e tests): namespaces x, y, z labelled
`ns=<name>` and `kubernetes.io/metadata.name=<name>`, each with pods a, b, c labelled `pod=<name>`,
serving TCP 80, 81 and UDP 80, 81. Container ports are named `serve-<port>-<proto>` as upstream;
in addition `web` is 80/TCP on pods a and 81/TCP on pods b (and absent on c), so a named port that
resolves differently per destination pod is part of every matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from knet.kube.models import Namespace, NetworkPolicy, Pod
from knet_testing.netpolicy.reference import World

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PORTS: tuple[tuple[int, str], ...] = ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"))
NS_NAME_LABEL = "kubernetes.io/metadata.name"

Cell = tuple[str, str, int, str]  # (from pod key, to pod key, port, protocol)
Table = dict[Cell, bool]


def pod_keys() -> list[str]:
    return [f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES]


def make_namespace(name: str, extra: Mapping[str, str] | None = None) -> Namespace:
    labels = {NS_NAME_LABEL: name, "ns": name, **(extra or {})}
    return Namespace.model_validate({"metadata": {"name": name, "labels": labels}})


def container_ports(name: str) -> list[dict]:
    tcp = [{"name": f"serve-{p}-tcp", "containerPort": p, "protocol": "TCP"} for p in (80, 81)]
    udp = [{"name": f"serve-{p}-udp", "containerPort": p, "protocol": "UDP"} for p in (80, 81)]
    web = {"a": [{"name": "web", "containerPort": 80}], "b": [{"name": "web", "containerPort": 81}]}.get(name, [])
    return [{"name": "tcp", "ports": tcp + web}, {"name": "udp", "ports": udp}]


def make_pod(namespace: str, name: str, ip: str, node: str, labels: Mapping[str, str] | None = None) -> Pod:
    return Pod.model_validate({
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {"pod": name})},
        "spec": {"nodeName": node, "containers": container_ports(name)},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })


def policy(raw: Mapping) -> NetworkPolicy:
    raw = dict(raw)
    raw.setdefault("apiVersion", "networking.k8s.io/v1")
    raw.setdefault("kind", "NetworkPolicy")
    return NetworkPolicy.model_validate(raw)


def cells(keys: Iterable[str] | None = None, ports: Iterable[tuple[int, str]] = PORTS) -> list[Cell]:
    keys = list(keys or pod_keys())
    return [(s, d, port, proto) for port, proto in ports for s in keys for d in keys]


def expected(policies: Iterable[NetworkPolicy], pods: Iterable[Pod], namespaces: Iterable[Namespace],
             want: Iterable[Cell]) -> Table:
    pods = list(pods)
    ip = {p.key: p.status.pod_ip for p in pods}
    world = World(policies, pods, namespaces)
    return {c: world.allowed(ip[c[0]], ip[c[1]], c[3], c[2]) for c in want}


def render(want: Table, got: Table, title: str = "") -> str:
    """Expected and observed grids side by side, one pair per port/protocol ('.' reachable,
    'X' blocked, mismatching cells marked with '!' in the observed grid)."""
    keys = list(dict.fromkeys(k for c in want for k in c[:2]))
    ports = list(dict.fromkeys((c[2], c[3]) for c in want))
    width = max(len(k) for k in keys) + 1
    lines = [title] if title else []
    for port, proto in ports:
        bad = sum(want[(s, d, port, proto)] != got.get((s, d, port, proto)) for s in keys for d in keys)
        lines.append(f"{port}/{proto}: expected (left) vs observed (right){f', {bad} mismatch(es)' if bad else ''}")
        header = " " * width + " ".join(k.ljust(3) for k in keys)
        lines.append(f"{header}   |   {header}")
        for s in keys:
            exp = " ".join(("." if want[(s, d, port, proto)] else "X").ljust(3) for d in keys)
            obs = []
            for d in keys:
                o = got.get((s, d, port, proto))
                mark = "." if o else "X"
                obs.append((mark + ("!" if o != want[(s, d, port, proto)] else "")).ljust(3))
            lines.append(f"{s.ljust(width)}{exp}   |   {s.ljust(width)}{' '.join(obs)}")
    return "\n".join(lines)


def mismatches(want: Table, got: Table) -> list[Cell]:
    return [c for c, v in want.items() if got.get(c) != v]
