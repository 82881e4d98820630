"""`retarget`: after a Service, its EndpointSlices or a Secret change, re-resolving only what uses
them gives the table a full compile gives (randomized worlds, one change at a time), and touches
no server that does not use them."""

from __future__ import annotations

import random

import pytest

from ingress import tls
from ingress.compiler import Options, Snapshot, compile_table, retarget
from ingress.nginxconf import Settings, render
from knet_testing.ingress import backend, endpoint_slice, ingress, path, rule, service, tls_secret

SERVICES = ["web", "api", "db"]
HOSTS = ["a.x", "b.x", "*.x", None]
SECRETS = ["s1", "s2"]


@pytest.fixture(scope="module")
def pairs():
    return [tls.self_signed("a.x", ["a.x", "*.x"]), tls.self_signed("b.x", ["b.x"])]


def random_service(rng: random.Random, name: str):
    roll = rng.random()
    if roll < 0.1:
        return None  # deleted
    if roll < 0.15:
        return service(name, kind="ExternalName")
    ports = [("http", 80)] if rng.random() < 0.7 else [("http", 8080), ("admin", 9000)]
    return service(name, *ports)


def random_slices(rng: random.Random, name: str) -> list:
    out = []
    for i, (port, port_name) in enumerate([(8080, "http"), (9090, "admin"), (8081, "http")]):
        if rng.random() < 0.5:
            pick = [f"10.244.{i}.{n}" for n in range(rng.randint(0, 3))]
            out.append(endpoint_slice(name, pick, port=port, port_name=port_name, suffix=f"s{i}",
                                      not_ready=["10.244.9.9"] if rng.random() < 0.3 else [],
                                      terminating=["10.244.8.8"] if rng.random() < 0.3 else []))
    return out


def random_secret(rng: random.Random, name: str, pairs):
    roll = rng.random()
    if roll < 0.2:
        return None
    if roll < 0.3:
        return tls_secret(name, b"garbage", pairs[0][1])
    return tls_secret(name, *pairs[rng.randrange(2)])


def random_ingresses(rng: random.Random) -> list:
    out = []
    for i in range(rng.randint(1, 4)):
        rules = []
        for host in rng.sample(HOSTS, rng.randint(1, 3)):
            paths = [path(rng.choice(["/", "/a", "/b"]), rng.choice(SERVICES), rng.choice([80, "http", 8080, "admin"]))
                     for _ in range(rng.randint(1, 2))]
            rules.append(rule(host, *paths))
        default = backend(rng.choice(SERVICES)) if rng.random() < 0.3 else None
        tls_entries = [{"hosts": [h], "secretName": rng.choice(SECRETS)} for h in ("a.x", "*.x", "b.x")
                       if rng.random() < 0.4]
        out.append(ingress(f"ing{i}", *rules, default=default, tls=tls_entries,
                           created=f"2024-01-0{i + 1}T00:00:00Z"))
    return out


def snapshot(ingresses, services, slices, secrets) -> Snapshot:
    return Snapshot.of(ingresses, [], [s for s in services.values() if s is not None],
                       [sl for lst in slices.values() for sl in lst], [s for s in secrets.values() if s is not None])


@pytest.mark.parametrize("seed", range(40))
def test_retarget_after_one_change_equals_a_full_compile(seed, pairs, tmp_path):
    rng = random.Random(seed)
    options = Options(default_backend="default/db:80" if rng.random() < 0.3 else None)
    ingresses = random_ingresses(rng)
    services = {n: random_service(rng, n) for n in SERVICES}
    slices = {n: random_slices(rng, n) for n in SERVICES}
    secrets = {n: random_secret(rng, n, pairs) for n in SECRETS}
    table = compile_table(snapshot(ingresses, services, slices, secrets), options)
    settings = Settings(run_dir=str(tmp_path))
    for _ in range(6):
        what = rng.choice(["service", "slices", "secret"])
        changed_services, changed_secrets = set(), set()
        if what == "secret":
            name = rng.choice(SECRETS)
            secrets[name] = random_secret(rng, name, pairs)
            changed_secrets.add(f"default/{name}")
        else:
            name = rng.choice(SERVICES)
            if what == "service":
                services[name] = random_service(rng, name)
            else:
                slices[name] = random_slices(rng, name)
            changed_services.add(f"default/{name}")
        snap = snapshot(ingresses, services, slices, secrets)
        before = dict(table.servers)
        table = retarget(table, snap, changed_services, changed_secrets)
        full = compile_table(snap, options)
        assert table.servers == full.servers
        assert table.upstreams == full.upstreams
        assert sorted(table.problems) == sorted(full.problems)
        assert (table.service_hosts, table.secret_hosts) == (full.service_hosts, full.secret_hosts)
        assert render(table, settings) == render(full, settings)
        # Servers that use neither the changed Service nor the changed Secret are the same objects.
        touched = set().union(*(full.service_hosts.get(k, set()) for k in changed_services),
                              *(full.secret_hosts.get(k, set()) for k in changed_secrets))
        assert all(table.servers[h] is before[h] for h in before if h not in touched)


def test_an_unreferenced_change_returns_an_equal_table():
    snap = Snapshot.of([ingress("i", rule("h", path("/", "web")))], [], [service("web")],
                       [endpoint_slice("web", ["10.244.1.2"])])
    table = compile_table(snap)
    again = retarget(table, snap, {"default/other"}, {"default/nope"})
    assert again.servers == table.servers and again.upstreams == table.upstreams
    assert all(again.servers[h] is table.servers[h] for h in table.servers)
