"""The relay against real sockets on loopback (FakeUpstream): shared upstream sockets, one upstream
query per burst of identical questions, a refusing upstream skipped at once, CoreDNS's policies,
max_concurrent, health checks taking an upstream out and back, TCP on truncation, failover."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable

from kdns import message, wire
from kdns.engine import Engine
from kdns.forward import SOCKETS, Group, Relay, Upstream
from knet_testing.kdns import FakeUpstream

Ask = Callable[..., Awaitable[message.Answer | None]]


def question(name: str, qtype: int = wire.A) -> bytes:
    return wire.name_to_wire(name) + struct.pack("!HH", qtype, wire.IN)


def with_relay(groups: list[Group], body: Callable[[Relay, Ask], Awaitable[object]]) -> object:
    async def main() -> object:
        loop = asyncio.get_running_loop()
        engine = Engine("loop")
        relay = Relay(engine)
        relay.attach(groups)
        engine.start(loop)

        async def ask(group: Group, name: str, qtype: int = wire.A) -> message.Answer | None:
            fut: asyncio.Future = loop.create_future()
            relay.ask(group, question(name, qtype), False, (lambda _, answer: fut.set_result(answer), None), None)
            return await asyncio.wait_for(fut, 30)

        try:
            return await body(relay, ask)
        finally:
            relay.close()
            engine.stop()

    return asyncio.run(main())


def addresses(answer: message.Answer | None) -> list[str]:
    assert answer is not None
    an, _, _ = message.records(answer)
    return sorted(socket.inet_ntoa(rr[3]) for rr in an if rr[1] == wire.A)


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_concurrent_questions_share_a_few_sockets():
    names = {f"h{i}.example.test": [f"192.0.2.{i % 250 + 1}"] for i in range(250)}
    with FakeUpstream(records=names) as up:
        g = Group("", [Upstream("127.0.0.1", up.port)])

        async def body(relay: Relay, ask: Ask) -> list:
            return await asyncio.gather(*(ask(g, n) for n in names))

        answers = with_relay([g], body)
    assert [addresses(a) for a in answers] == list(names.values())
    assert 1 <= len(up.udp_sources) <= SOCKETS, up.udp_sources


def test_identical_questions_in_flight_make_one_upstream_query():
    with FakeUpstream(records={"burst.example.test": ["192.0.2.7"]}, delay=0.3) as up:
        g = Group("", [Upstream("127.0.0.1", up.port)])

        async def body(relay: Relay, ask: Ask) -> list:
            return await asyncio.gather(*(ask(g, "burst.example.test") for _ in range(20)))

        answers = with_relay([g], body)
    assert all(addresses(a) == ["192.0.2.7"] for a in answers)
    assert up.count("burst.example.test") == 1


def test_refusing_upstream_is_skipped_at_once():
    """Its ICMP port-unreachable ends the wait at once, not the timeout. (The kernel drops ICMP
    errors beyond a machine-wide budget, which a busy machine can exhaust: up to three tries for
    one where the error arrived.)"""
    with FakeUpstream(records={"www.example.test": ["192.0.2.9"]}) as up:
        for _ in range(3):
            port = dead_port()
            g = Group("", [Upstream("127.0.0.1", port), Upstream("127.0.0.1", up.port)], policy="sequential",
                      timeout=20.0)

            async def body(relay: Relay, ask: Ask, g: Group = g) -> tuple:
                t0 = time.monotonic()
                answer = await ask(g, "www.example.test")
                return answer, time.monotonic() - t0, relay.socket_errors

            answer, took, icmp = with_relay([g], body)
            assert addresses(answer) == ["192.0.2.9"]
            if icmp:
                break
    assert icmp, "no ICMP error arrived in three tries"
    assert took < 10, f"the refusing upstream cost {took:.1f}s: its ICMP error should end the wait, not 20 s"


def test_policies_order_the_upstreams():
    ups = [Upstream("127.0.0.1", p) for p in (1, 2, 3)]

    def firsts(policy: str) -> list[int]:
        g = Group("", ups, policy=policy)
        Relay(Engine("loop")).attach([g])
        return [g.order()[0].upstream.port for _ in range(300)]

    assert set(firsts("sequential")) == {1}
    rr = firsts("round_robin")
    assert rr[:6] in ([2, 3, 1, 2, 3, 1], [1, 2, 3, 1, 2, 3]) and rr.count(1) == rr.count(2) == rr.count(3)
    spread = firsts("random")
    assert all(spread.count(p) > 50 for p in (1, 2, 3))


def test_max_concurrent_rejects_beyond_the_limit():
    names = {f"slow{i}.example.test": ["192.0.2.1"] for i in range(5)}
    with FakeUpstream(records=names, delay=0.3) as up:
        g = Group("", [Upstream("127.0.0.1", up.port)], max_concurrent=2)

        async def body(relay: Relay, ask: Ask) -> tuple:
            answers = await asyncio.gather(*(ask(g, n) for n in names))
            return answers, relay.max_concurrent_rejects, g.concurrent

        answers, rejects, left = with_relay([g], body)
    assert sum(a is None for a in answers) == 3 and rejects == 3 and left == 0
    assert sum(a is not None for a in answers) == 2


class Reviver:
    """A minimal upstream bound on a given port later (the 'dead' one coming back): NOERROR to all."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, int, bool]] = []  # (name, type, RD) of each query
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            with contextlib.suppress(wire.FormError, OSError):
                q = wire.parse_query(data)
                self.seen.append((q.qname, q.qtype, bool(q.flags & wire.RD)))
                self.sock.sendto(wire.build(q, wire.Reply(ra=True), 1232)[0], addr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def test_health_checks_take_an_upstream_out_and_back():
    port = dead_port()
    with FakeUpstream(records={"a.example.test": ["192.0.2.1"], "b.example.test": ["192.0.2.2"]}) as up:
        g = Group("", [Upstream("127.0.0.1", port), Upstream("127.0.0.1", up.port)], policy="sequential",
                  health_check=0.05, max_fails=2, health_rd=False,  # `health_check 50ms no_rec domain ...`
                  health_question=question("health.example.test", wire.NS))
        dead = f"127.0.0.1:{port}"

        async def body(relay: Relay, ask: Ask) -> None:
            assert addresses(await ask(g, "a.example.test")) == ["192.0.2.1"]  # via the second one
            target = g.targets[0]
            deadline = time.monotonic() + 20
            while not target.down(g.max_fails) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert target.down(g.max_fails) and relay.stats[dead].healthcheck_failures > 2
            before = relay.stats[dead].requests
            assert addresses(await ask(g, "b.example.test")) == ["192.0.2.2"]
            assert up.count("b.example.test") == 1
            # Down: the query went straight to the second upstream (only health checks went to it).
            assert relay.stats[dead].requests - before <= 2
            reviver = Reviver(port)
            try:
                while target.down(g.max_fails) and time.monotonic() < deadline + 20:
                    await asyncio.sleep(0.05)
                assert not target.down(g.max_fails)
                answer = await ask(g, "c.example.test")  # sequential: the first one again
                assert answer is not None and answer.rcode == wire.NOERROR and up.count("c.example.test") == 0
                assert ("health.example.test", wire.NS, False) in reviver.seen  # the check it answered
            finally:
                reviver.close()

        with_relay([g], body)


def test_truncated_reply_is_asked_again_over_tcp_and_force_tcp():
    big = [f"198.51.100.{i}" for i in range(1, 101)]
    with FakeUpstream(records={"big.example.test": big, "small.example.test": ["192.0.2.3"]}) as up:
        g = Group("", [Upstream("127.0.0.1", up.port)])
        forced = Group("", [Upstream("127.0.0.1", up.port)], force_tcp=True)

        async def body(relay: Relay, ask: Ask) -> None:
            assert addresses(await ask(g, "big.example.test")) == sorted(big)
            assert addresses(await ask(forced, "small.example.test")) == ["192.0.2.3"]

        with_relay([g, forced], body)
    assert ("udp", "big.example.test", wire.A) in up.queries and ("tcp", "big.example.test", wire.A) in up.queries
    assert up.queries.count(("tcp", "small.example.test", wire.A)) == 1 and up.count("small.example.test") == 1


def test_failover_moves_on_for_the_listed_rcodes():
    with FakeUpstream(records={}) as empty, FakeUpstream(records={"x.example.test": ["192.0.2.4"]}) as full:
        ups = [Upstream("127.0.0.1", empty.port), Upstream("127.0.0.1", full.port)]
        plain = Group("", ups, policy="sequential")
        failover = Group("", ups, policy="sequential", failover=frozenset({wire.NXDOMAIN}))

        async def body(relay: Relay, ask: Ask) -> tuple:
            return await ask(plain, "x.example.test"), await ask(failover, "x.example.test")

        first, second = with_relay([plain, failover], body)
    assert first is not None and first.rcode == wire.NXDOMAIN  # CoreDNS's default: the answer stands
    assert addresses(second) == ["192.0.2.4"]


def test_upstream_parsing():
    assert Upstream.parse("10.0.0.1") == Upstream("10.0.0.1", 53)
    assert Upstream.parse("dns://127.0.0.1:5353") == Upstream("127.0.0.1", 5353)
    assert Upstream.parse("[fd00::1]:53") == Upstream("fd00::1", 53)
    assert Upstream.parse("fd00::1") == Upstream("fd00::1", 53)
    assert Upstream("fd00::1", 53).label == "[fd00::1]:53"
