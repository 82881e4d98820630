"""`knet netpol explain` from an objects file, and the daemon's pure parts."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest
import yaml

from knet_testing.netpolicy import matrix
from knet_testing.netpolicy.scenarios import A, np, pods, port, rule, sel
from netpolicy import daemon, explain
from netpolicy.backend import ApplyResult
from tests.informer_feed import feed, scans, settle


@pytest.fixture
def objects_file(tmp_path):
    items = [matrix.make_namespace(n).to_dict() | {"kind": "Namespace"} for n in "xy"]
    items += [matrix.make_pod("x", "a", "10.244.1.2", "node1").to_dict() | {"kind": "Pod"},
              matrix.make_pod("x", "b", "10.244.2.2", "node2").to_dict() | {"kind": "Pod"},
              matrix.make_pod("y", "a", "10.244.2.3", "node2").to_dict() | {"kind": "Pod"}]
    items += [matrix.policy(np("only-b", select=A, ingress=[rule([pods(pod="b")], [port(80)])])).to_dict()]
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return str(path)


def test_explain_allowed_and_denied(objects_file, capsys):
    assert explain.main(["x/b", "x/a", "80", "--objects", objects_file]) == 0
    out = capsys.readouterr().out
    assert out.startswith("x/b (10.244.2.2) -> x/a (10.244.1.2) 80/TCP: ALLOWED")
    assert "ingress of x/a: allowed by x/only-b rule 0" in out and "egress of x/b: not isolated" in out
    assert explain.main(["y/a", "a", "81/tcp", "-n", "x", "--objects", objects_file, "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["allowed"] is False and "isolated by x/only-b" in verdict["reasons"][-1]


def test_explain_addresses_and_errors(objects_file, capsys):
    assert explain.main(["192.168.33.100", "10.244.1.2", "80/UDP", "--objects", objects_file]) == 0
    out = capsys.readouterr().out
    assert "DENIED" in out and "192.168.33.100 is not a pod" in out
    assert explain.main(["x/nope", "x/a", "80", "--objects", objects_file]) == 2
    assert explain.main(["x/b", "x/a", "80/ICMP", "--objects", objects_file]) == 2


def test_add_parser_wires_a_subcommand(objects_file):
    p = argparse.ArgumentParser()
    explain.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["netpol", "explain", "x/b", "x/a", "80", "--objects", objects_file])
    assert args.func is explain.run and args.func(args) == 0


def test_drop_totals_survive_counter_restarts():
    t = daemon.DropTotals()
    assert t.update({"a": 5}) == {"a": 5}
    assert t.update({"a": 7, "b": 1}) == {"a": 7, "b": 1}
    assert t.update({"a": 2}) == {"a": 9, "b": 1}  # "a" was deleted and created again


class FakeBackend:
    def __init__(self):
        self.current = None
        self.calls = []

    def apply(self, compiled, full=False):
        from netpolicy import nft
        self.calls.append(full)
        self.current = nft.build(compiled)
        return ApplyResult(full, 3, 0.001)


def enforcer(loop):
    """An Enforcer whose informers are fed by the test (no API server) and a recording backend."""
    backend = FakeBackend()
    e = daemon.Enforcer(daemon.parse_args(["--node-name", "node1"]), backend=backend)  # type: ignore[arg-type]
    e.make_informers(None, loop)
    return e, backend


def test_enforcer_sync_compiles_for_its_node_and_sets_metrics():
    async def scenario():
        e, backend = enforcer(asyncio.get_running_loop())
        pods, namespaces, policies = e.informers
        feed(pods, matrix.make_pod("x", "a", "10.244.1.2", "node1"))
        feed(pods, matrix.make_pod("x", "b", "10.244.2.2", "node2"))
        feed(namespaces, matrix.make_namespace("x"))
        feed(policies, matrix.policy(np("deny", types=["Ingress"])))
        await settle()
        e.start_compiling()
        await e.sync(full=True)
        return e, backend

    e, backend = asyncio.run(scenario())
    assert backend.calls == [True] and set(e.compiled.pods) == {"x/a"}
    text = e.metrics.registry.render()
    assert 'netpol_pods{state="isolated_ingress"} 1' in text and "netpol_programming_latency_seconds_count 1" in text
    assert e.health()[0]


def test_enforcer_handles_a_pod_or_namespace_change_without_scanning():
    async def scenario():
        e, backend = enforcer(asyncio.get_running_loop())
        pods, namespaces, policies = e.informers
        for ns in "xy":
            feed(namespaces, matrix.make_namespace(ns))
            for i, name in enumerate("ab"):
                feed(pods, matrix.make_pod(ns, name, f"10.244.{i + 1}.{ord(ns)}", f"node{i + 1}"))
        feed(policies, matrix.policy(np("from-y", "x", ingress=[rule([{"namespaceSelector": sel({"team": "t"})}])])))
        await settle()
        e.start_compiling()
        await e.sync(full=True)
        assert e.compiled.pods["x/a"].ingress.rules[0].clauses[0].nets == ()
        before = scans(e.informers)

        feed(namespaces, matrix.make_namespace("y", {"team": "t"}))  # y's pods become peers
        await settle()
        await e.sync()
        assert e.compiled.pods["x/a"].ingress.rules[0].clauses[0].nets == ("10.244.1.121/32", "10.244.2.121/32")
        feed(pods, matrix.make_pod("y", "c", "10.244.1.200", "node2"))  # one more peer
        await settle()
        await e.sync()
        assert "10.244.1.200/32" in e.compiled.pods["x/a"].ingress.rules[0].clauses[0].nets
        assert scans(e.informers) == before and backend.calls == [True, False, False]

    asyncio.run(scenario())
