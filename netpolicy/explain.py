"""`knet netpol explain SRC DST PORT[/PROTO]`: would this connection pass, and which policy decides?

Answers from the compiled model (`netpolicy.compiler`, every pod of the cluster), the same model
the daemons program, so "why was this blocked" names the isolating policies and the rules that
would allow it. SRC and DST are `namespace/pod`, `pod` (in --namespace) or an IP address; PORT
is a number with an optional /TCP, /UDP or /SCTP (default TCP).

Objects come from the API server (--kubeconfig / --context, as the daemons) or from a file
(--objects: `kubectl get pods,namespaces,networkpolicies -A -o yaml` output, JSON or YAML).

Wiring into `knet`: `netpolicy.cli.register(subparsers)` adds `netpol explain` (through `add_parser`);
`netpolicy.explain.main(argv)` runs it alone (`python -m netpolicy.explain ...`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from knet.kube.models import Namespace, NetworkPolicy, Pod, parse
from netpolicy.compiler import compile_policies, eligible
from netpolicy.model import PROTOCOLS, Verdict

KINDS = {"Pod": Pod, "Namespace": Namespace, "NetworkPolicy": NetworkPolicy}


class ExplainError(ValueError):
    pass


def parse_port(text: str) -> tuple[int, str]:
    number, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if proto not in PROTOCOLS or not number.isdigit() or not 0 < int(number) < 65536:
        raise ExplainError(f"invalid port {text!r}: expected PORT[/TCP|UDP|SCTP]")
    return int(number), proto


def load_file(path: str) -> dict[str, list]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    raw: list[dict[str, Any]] = []
    for d in docs:
        items = d if isinstance(d, list) else d.get("items") if isinstance(d, dict) and "items" in d else [d]
        raw += [i for i in items if isinstance(i, dict)]
    out: dict[str, list] = {k: [] for k in KINDS}
    for item in raw:
        kind = item.get("kind")
        if kind in KINDS and (obj := parse(KINDS[kind], item)) is not None:
            out[kind].append(obj)
    return out


def load_api(args: argparse.Namespace) -> dict[str, list]:
    from knet.kube import client as kube_client  # ~1 s to import; every `knet` command imports this module

    api = kube_client.api_client_from_args(args)
    out: dict[str, list] = {}
    for kind, model in KINDS.items():
        items = kube_client.list_objects(api, model).get("items", [])
        out[kind] = [o for o in (parse(model, i) for i in items) if o is not None]
    return out


def resolve(ref: str, pods: list[Pod], namespace: str) -> tuple[str, str]:
    """(label for output, IP) of a pod reference or an address."""
    try:
        return ref, str(ipaddress.ip_address(ref))
    except ValueError:
        pass
    ns, _, name = ref.rpartition("/")
    key = f"{ns or namespace}/{name}"
    for pod in pods:
        if pod.key == key:
            if not eligible(pod):
                raise ExplainError(f"pod {key} has no address policies apply to (no IP yet, host network or done)")
            return f"{key} ({pod.ips[0]})", pod.ips[0]
    raise ExplainError(f"no pod {key} (and {ref!r} is not an IP address)")


def explain(objects: dict[str, list], src: str, dst: str, port: str, namespace: str = "default",
            ) -> tuple[str, Verdict]:
    number, proto = parse_port(port)
    pods = objects["Pod"]
    src_label, src_ip = resolve(src, pods, namespace)
    dst_label, dst_ip = resolve(dst, pods, namespace)
    compiled = compile_policies(objects["NetworkPolicy"], pods, objects["Namespace"])
    verdict = compiled.evaluate(src_ip, dst_ip, proto, number)
    lines = [f"{src_label} -> {dst_label} {number}/{proto}: {'ALLOWED' if verdict.allowed else 'DENIED'}"]
    lines += [f"  {r}" for r in verdict.reasons]
    if compiled.by_ip(src_ip) is None:
        lines.append(f"  {src_label} is not a pod: no egress policy applies")
    if compiled.by_ip(dst_ip) is None:
        lines.append(f"  {dst_label} is not a pod: no ingress policy applies")
    return "\n".join(lines), verdict


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="namespace/pod, pod (in --namespace) or IP")
    p.add_argument("dst", help="namespace/pod, pod (in --namespace) or IP")
    p.add_argument("port", help="PORT[/TCP|UDP|SCTP]")
    p.add_argument("-n", "--namespace", default="default", help="namespace of pod names without one")
    p.add_argument("--objects", help="read pods, namespaces and policies from this YAML/JSON file")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("--json", action="store_true", help="print {allowed, reasons} as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        objects = load_file(args.objects) if args.objects else load_api(args)
        text, verdict = explain(objects, args.src, args.dst, args.port, args.namespace)
    except (ExplainError, OSError) as e:
        print(f"knet netpol explain: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"allowed": verdict.allowed, "reasons": list(verdict.reasons)}) if args.json else text)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `netpol explain` to a CLI's subparsers (`netpolicy.cli`); the handler is set as `func`."""
    netpol = subparsers.add_parser("netpol", help="NetworkPolicy tools")
    sub = netpol.add_subparsers(dest="netpol_command", required=True)
    ex = sub.add_parser("explain", help="would SRC reach DST:PORT, and which policy decides")
    add_arguments(ex)
    ex.set_defaults(func=run)
    return netpol


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knet netpol explain", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
