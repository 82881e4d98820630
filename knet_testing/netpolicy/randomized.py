"""Seeded random policies over the matrix topology (x, y, z x a, b, c), for the matrix tests and
the compiler-vs-reference cross-check. Same seed + same pod addresses = same policies."""

from __future__ import annotations

import random
from typing import Any

from knet_testing.netpolicy.scenarios import NS_KEY, Ctx, Scenario, Step, expr, np, sel

Raw = dict[str, Any]


def _pod_selector(rng: random.Random) -> Raw:
    return rng.choice([
        sel(), sel(), sel({"pod": rng.choice("abc")}), expr("pod", "In", *rng.sample("abc", 2)),
        expr("pod", "NotIn", rng.choice("abc")), expr("pod", "Exists"), sel({"pod": "nobody"}),
    ])


def _ns_selector(rng: random.Random) -> Raw:
    return rng.choice([
        sel(), sel({NS_KEY: rng.choice("xyz")}), sel({"ns": rng.choice("xyz")}),
        expr(NS_KEY, "NotIn", rng.choice("xyz")), expr("ns", "In", *rng.sample("xyz", 2)),
    ])


def _ip_block(rng: random.Random, ctx: Ctx) -> Raw:
    keys = sorted(ctx.ips)
    kind = rng.randrange(4)
    if kind == 0:
        return {"ipBlock": {"cidr": ctx.host(rng.choice(keys))}}
    if kind == 1:
        return {"ipBlock": {"cidr": ctx.subnet(rng.choice(keys))}}
    excepts = sorted({rng.choice([ctx.host(k), ctx.subnet(k)]) for k in rng.sample(keys, rng.randint(1, 3))})
    # An except of a /24 and of a /32 inside it is fine for the API (each must be inside cidr).
    return {"ipBlock": {"cidr": "10.244.0.0/16" if kind == 2 else "0.0.0.0/0", "except": excepts}}


def _peer(rng: random.Random, ctx: Ctx) -> Raw:
    kind = rng.randrange(4)
    if kind == 0:
        return {"podSelector": _pod_selector(rng)}
    if kind == 1:
        return {"namespaceSelector": _ns_selector(rng)}
    if kind == 2:
        return {"namespaceSelector": _ns_selector(rng), "podSelector": _pod_selector(rng)}
    return _ip_block(rng, ctx)


def _port(rng: random.Random) -> Raw:
    kind = rng.randrange(6)
    proto = rng.choice(["TCP", "TCP", "UDP", "UDP", "SCTP"])
    if kind == 0:
        return {"protocol": proto}
    if kind == 1:
        return {"port": rng.choice([80, 81]), "protocol": proto}
    if kind == 2:
        first = rng.choice([1, 79, 80, 81])
        return {"port": first, "endPort": first + rng.choice([0, 1, 5, 100]), "protocol": proto}
    if kind == 3:
        return {"port": rng.choice([80, 81])}
    name = rng.choice(["serve-80-tcp", "serve-81-tcp", "serve-80-udp", "serve-81-udp", "web", "nope"])
    out: Raw = {"port": name}
    if name.endswith("udp") or rng.random() < 0.2:
        out["protocol"] = "UDP" if name.endswith("udp") else rng.choice(["TCP", "UDP"])
    return out


def _rule(rng: random.Random, ctx: Ctx, key: str) -> Raw:
    out: Raw = {}
    r = rng.random()
    if r < 0.2:
        pass  # no peers: every address
    elif r < 0.25:
        out[key] = []
    else:
        out[key] = [_peer(rng, ctx) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.6:
        out["ports"] = [_port(rng) for _ in range(rng.randint(1, 2))]
    return out


def random_policies(seed: int, ctx: Ctx) -> list[Raw]:
    rng = random.Random(seed)
    out = []
    for i in range(rng.randint(1, 3)):
        types = rng.choice([None, None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]])
        ingress = [_rule(rng, ctx, "from") for _ in range(rng.randint(0, 2))] if rng.random() < 0.8 else None
        egress = [_rule(rng, ctx, "to") for _ in range(rng.randint(0, 2))] if rng.random() < 0.5 else None
        out.append(np(f"random-{seed}-{i}", ns=rng.choice("xyz"), select=_pod_selector(rng),
                      ingress=ingress, egress=egress, types=types))
    return out


def _labels(seed: int) -> dict[str, dict[str, str]]:
    """Some seeds also relabel a pod, so label changes of peers are part of the mix."""
    rng = random.Random(seed * 7919)
    if rng.random() < 0.7:
        return {}
    key = f"{rng.choice('xyz')}/{rng.choice('abc')}"
    return {key: {"pod": rng.choice("abc"), "extra": "yes"}}


def scenarios(seeds: range) -> list[Scenario]:
    return [Scenario(f"random-{seed}", [Step(lambda c, s=seed: random_policies(s, c), pod_labels=_labels(seed))])
            for seed in seeds]
