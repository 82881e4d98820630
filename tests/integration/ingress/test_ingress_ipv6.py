"""knet-ingress with IPv6, in the ingress lab (v6 addresses added beside the lab's IPv4 ones:
underlay fd00:33::/64, node1's pods fd00:10:244:1::/64): an IPv6-only backend Service, a
dual-stack one (both slices of one pod), nginx's [::] listen reached over IPv6 from the client
namespace, and a bracketed IPv6 literal as the Host header."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import pytest

from knet_testing.ingress import ingress, path, rule
from tests.integration.ingress.ingress_env import CLIENT_V6, NODE_V6, POD_GATEWAY_V6, Env

pytestmark = pytest.mark.integration
POD_V6 = "fd00:10:244:1::50"


@pytest.fixture(scope="module")
def v6(env: Env) -> Iterator[Env]:
    env.enable_ipv6()
    env.backend_pod_v6("whale-six", "Whale Six", POD_V6)
    env.service("whale-svc-six", [], v6=[POD_V6])  # IPv6 only
    env.service("whale-svc-dual", ["whale-six"], v6=[POD_V6])  # one pod, a slice per family
    env.put(ingress("six", rule("six.whale.hey", path("/", "whale-svc-six")),
                    rule("dual.whale.hey", path("/", "whale-svc-dual"))))
    env.sync()
    yield env
    env.remove("Ingress", "six")
    for svc in ("whale-svc-six", "whale-svc-dual"):
        env.remove("Service", svc)
        env.remove("EndpointSlice", f"{svc}-a")
        env.remove("EndpointSlice", f"{svc}-v6")
    env.sync()
    env.stop_pod("whale-six")


def seen(body: str) -> dict:
    """What the backend received (its JSON line)."""
    return json.loads(body.split("\n", 1)[1])


def test_ipv6_backend(v6: Env):
    with open(os.path.join(v6.settings.run_dir, "nginx.conf")) as f:
        assert f"server [{POD_V6}]:80 " in f.read()
    code, body = v6.curl("six.whale.hey")
    assert code == 200 and body.startswith("Whale Six\n"), body
    assert seen(body)["client"] == POD_GATEWAY_V6  # nginx connected over IPv6, from node1's bridge


def test_ipv6_listen(v6: Env):
    """nginx's [::]:80 from the client over IPv6, to an IPv4 and an IPv6 backend."""
    code, body = v6.curl("a.whale.hey", address=NODE_V6)
    assert code == 200 and body.startswith("Whale Type A\n"), body
    got = seen(body)["headers"]
    assert got["host"] == "a.whale.hey:80" or got["host"] == "a.whale.hey"
    assert got["x-forwarded-for"] == CLIENT_V6 and got["x-real-ip"] == CLIENT_V6
    code, body = v6.curl("six.whale.hey", address=NODE_V6)
    assert code == 200 and body.startswith("Whale Six\n"), body


def test_bracketed_ipv6_host_header(v6: Env):
    """A request for http://[fd00:33::11]/ carries `Host: [fd00:33::11]`: no rule host can be an
    address (the Ingress spec), so the default backend answers, and the backend sees the Host as
    the client sent it."""
    code, body = v6.curl(f"[{NODE_V6}]")
    assert code == 200 and body.startswith("Whale Default\n"), body
    assert seen(body)["headers"]["host"] in (f"[{NODE_V6}]", f"[{NODE_V6}]:80")
    code, body = v6.curl(f"[{NODE_V6}]", "/", "-H", f"Host: [{NODE_V6}]:80")
    assert code == 200 and body.startswith("Whale Default\n"), body
    assert seen(body)["headers"]["host"] == f"[{NODE_V6}]:80"


def test_dual_stack_service_uses_both_families(v6: Env):
    clients: Counter = Counter()
    for _ in range(12):
        code, body = v6.curl("dual.whale.hey")
        assert code == 200 and body.startswith("Whale Six\n"), body
        clients[seen(body)["client"]] += 1
    # The pod's two addresses are two upstream servers (round robin): nginx reached it over IPv6
    # from the bridge's v6 address and over IPv4 (a v4-mapped peer on the dual-stack socket).
    assert POD_GATEWAY_V6 in clients and any(c.startswith("::ffff:10.244.1.") for c in clients), clients
