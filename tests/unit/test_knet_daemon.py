"""knet.daemon (what the daemons share around their work) and knet.kube's lazy exports."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from knet import daemon, metrics


@pytest.fixture
def setups(monkeypatch):
    calls: list[tuple[str, str]] = []  # logs.setup replaces the root handlers: not under pytest
    monkeypatch.setattr(daemon.logs, "setup", lambda component, level, fmt="text": calls.append((component, level)))
    return calls


def test_run_exit_codes_and_fatal_line(setups, caplog):
    ran = []

    async def ok() -> None:
        ran.append(asyncio.get_running_loop())

    async def boom() -> None:
        raise RuntimeError("no kubeconfig")

    assert daemon.run("kdns", "debug", ok) == 0 and len(ran) == 1
    with caplog.at_level(logging.ERROR):
        assert daemon.run("kdns", "info", boom) == 1
    assert [r.getMessage() for r in caplog.records] == ["fatal"]
    assert setups == [("kdns", "debug"), ("kdns", "info")]


def test_run_on_uvloop(setups):
    uvloop = pytest.importorskip("uvloop")
    loops = []

    async def amain() -> None:
        loops.append(asyncio.get_running_loop())

    assert daemon.run("kproxy", "info", amain, event_loop="uvloop") == 0
    assert isinstance(loops[0], uvloop.Loop)
    assert daemon.run("kproxy", "info", amain, event_loop="asyncio") == 0
    assert not isinstance(loops[1], uvloop.Loop)


def test_serve_routes_sigterm_to_stop_and_serves_metrics(monkeypatch):
    served = []
    monkeypatch.setattr(daemon.metrics, "serve", lambda *a: served.append(a))
    registry = metrics.Registry()

    def health() -> tuple[bool, str]:
        return True, "ok"

    async def amain(address: str | None) -> None:
        stopping = asyncio.Event()
        daemon.serve(stopping.set, registry, health, address)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopping.wait(), 5)

    asyncio.run(amain("127.0.0.1:9999"))
    asyncio.run(amain(None))  # no endpoint
    assert served == [(registry, "127.0.0.1:9999", health)]


class FakeInformer:
    def __init__(self) -> None:
        self.synced = threading.Event()

    async def wait_synced_async(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.synced.wait, timeout)


def test_wait_synced():
    async def scenario() -> tuple[bool, bool]:
        a, b = FakeInformer(), FakeInformer()
        stopping = asyncio.Event()
        a.synced.set()
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, b.synced.set)
        synced = await daemon.wait_synced([a, b], stopping, poll=0.05)
        c = FakeInformer()
        loop.call_later(0.1, stopping.set)
        stopped = await asyncio.wait_for(daemon.wait_synced([a, c], stopping, poll=0.05), 5)
        return synced, stopped

    assert asyncio.run(scenario()) == (True, False)


def test_kube_exports_are_lazy():
    code = ("import sys, knet.kube, knet.kube.models, knet.kube.selectors, knet.kube.events\n"
            "assert 'kubernetes' not in sys.modules, 'kubernetes imported eagerly'\n"
            "from knet.kube import threadsafe, parse, Selector\n"
            "assert 'kubernetes' not in sys.modules\n"
            "from knet.kube import *\n"
            "assert Informer.__module__ == 'knet.kube.informer' and callable(new_api_client)\n"
            "assert set(knet.kube.__all__) <= set(dir(knet.kube))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parents[2])
    import knet.kube
    with pytest.raises(AttributeError):
        knet.kube.no_such_name  # noqa: B018
