"""Changes under load: not one failed request while endpoints scale down and up (graceful and
crashing backends), while Ingresses are edited, across a controller restart; requests and
WebSockets in flight survive reloads."""

from __future__ import annotations

import threading
import time

import pytest

from ingress.controller import Controller
from ingress.nginx import Nginx
from knet_testing.ingress import ingress, path, rule
from tests.integration.ingress.ingress_env import STATUS_PORT, Env, Stream, ns_socket

pytestmark = pytest.mark.integration
LATER = "2024-04-01T00:00:00Z"


def assert_clean(stream: Stream, reloads_before: int, env: Env, min_ok: int = 100) -> None:
    st = stream.stats
    assert st.failures == [], st.failures[:10]
    assert st.ok >= min_ok, st
    print(f"\nstream: ok={st.ok} failed={len(st.failures)} keepalive_retries={st.keepalive_retries} "
          f"backends={dict(st.backends)} reloads={_reloads(env) - reloads_before}")


def _reloads(env: Env) -> int:
    return int(env.controller.metrics.reloads.values.get(("ok",), 0))


def test_endpoint_scale_down_and_up_under_load(env: Env) -> None:
    env.backend_pod("sc1", "scale-1", "node1")
    env.backend_pod("sc2", "scale-2", "node2")
    env.service("scale", ["sc1", "sc2"])
    env.put(ingress("scale", rule("scale.test", path("/", "scale")), created=LATER))
    env.sync()
    r0 = _reloads(env)
    with Stream(env, "scale.test") as stream:
        time.sleep(1)
        env.backend_pod("sc3", "scale-3", "node2")          # scale up
        env.service("scale", ["sc1", "sc2", "sc3"])
        env.sync()
        time.sleep(1)
        env.service("scale", ["sc2", "sc3"], terminating=["sc1"])   # scale down, the way a cluster does
        env.sync()                                          # it: endpoint terminating first, then SIGTERM
        env.stop_pod("sc1", graceful=True)
        env.service("scale", ["sc2", "sc3"])
        env.sync()
        time.sleep(1)
        env.kill("sc2", graceful=False)                     # a crash: still listed as an endpoint
        time.sleep(1.5)                                     # retries + passive health carry the load
        env.service("scale", ["sc3"])
        env.sync()
        env.stop_pod("sc2")
        time.sleep(1)
    assert_clean(stream, r0, env)
    assert stream.stats.backends["scale-3"] > 0 and set(stream.stats.backends) <= {"scale-1", "scale-2", "scale-3"}
    assert env.who("scale.test") == "scale-3"


def test_ingress_edits_under_load(env: Env) -> None:
    env.put(ingress("edit", rule("edit.test", path("/", "whale-svc-a")), created=LATER))
    env.sync()
    r0 = _reloads(env)
    with Stream(env, "edit.test") as stream:
        for i in range(6):
            time.sleep(0.5)
            svc = "whale-svc-b" if i % 2 == 0 else "whale-svc-a"
            env.put(ingress("edit", rule("edit.test", path("/", svc), path(f"/extra{i}", "whale-svc-a")),
                            created=LATER))
            assert env.sync().reloaded
        time.sleep(0.5)
    assert_clean(stream, r0, env)
    assert stream.stats.backends["Whale Type A"] > 0 and stream.stats.backends["Whale Type B"] > 0
    assert env.who("edit.test") == "Whale Type A"


def test_in_flight_requests_and_websockets_survive_reloads(env: Env) -> None:
    results: list[tuple[int, str]] = []

    def slow() -> None:
        results.append(env.curl("a.whale.hey", "/slow?ms=2500"))

    ws = ns_socket(env.client_ns)
    ws.connect((env.ip, 80))
    ws.sendall(b"GET /ws HTTP/1.1\r\nHost: b.whale.hey\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    hello = b""
    while b"hello from" not in hello:
        hello += ws.recv(4096)
    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for i in range(3):                                   # three reloads while the requests wait
        env.put(ingress("noise", rule(f"noise{i}.test", path("/", "whale-svc-a")), created=LATER))
        assert env.sync().reloaded
    for t in threads:
        t.join(15)
    assert [c for c, _ in results] == [200] * 4 and all(b.startswith("Whale Type A") for _, b in results)
    ws.sendall(b"still here")                            # the old worker keeps the tunnel
    assert ws.recv(4096) == b"still here"
    ws.close()


def test_controller_restart_adopts_nginx_without_disruption(env: Env) -> None:
    with Stream(env, "a.whale.hey") as stream:
        time.sleep(0.5)
        old_pid = env.nginx.pid
        # A new controller process (same run dir) finds the running master and reloads it,
        # rather than failing to bind or stopping traffic.
        nginx = Nginx(env.settings.run_dir, STATUS_PORT, netns=env.node_ns)
        controller = Controller(env.settings, env.controller.options, nginx, publish=[env.ip])
        controller.start(env.snapshot())
        assert nginx.pid == old_pid
        env.controller, env.nginx = controller, nginx
        time.sleep(0.5)
    assert_clean(stream, 0, env, min_ok=30)  # a fresh controller: its own reload count
