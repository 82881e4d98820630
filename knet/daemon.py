"""What every knet daemon does around its own work: log setup, the event loop, SIGTERM/SIGINT,
the /metrics + /healthz endpoint, waiting for the informers' first lists, and the exit code.

    def main(argv=None) -> int:
        args = parse_args(argv)

        async def amain() -> None:
            worker = Worker(args)
            daemon.serve(worker.stop, worker.registry, worker.health, args.metrics_bind_address)
            await worker.run()            # run(): ... if not await daemon.wait_synced(...): return

        return daemon.run("component", args.log_level, amain, logging_format=args.logging_format)

`add_logging_arguments(parser)` gives a daemon `--log-level` and `--logging-format text|json`; a bad
value of either ends it with one line and exit status 2 (knet.logs.setup). What a daemon does on
stop (what it leaves in place, what it closes) stays its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from knet import logs, metrics

if TYPE_CHECKING:  # knet.kube.informer imports the kubernetes client: not for this module's importers
    from knet.kube.informer import Informer

log = logging.getLogger("knet.daemon")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level and --logging-format, checked by `run()` (not by argparse: its error is the whole
    usage text; an unknown value gets one line here)."""
    parser.add_argument("--log-level", default="info", metavar="LEVEL", help=f"one of {', '.join(logs.LEVELS)}")
    parser.add_argument("--logging-format", default="text", metavar="FORMAT",
                        help="text (logfmt lines) or json (one object per line, Kubernetes' schema)")


def run(component: str, log_level: str, amain: Callable[[], Coroutine[Any, Any, None]], *,
        event_loop: str = "asyncio", logging_format: str = "text") -> int:
    """Set up logging as `component`, run `amain()` to its end on `event_loop` ("asyncio" or
    "uvloop") and return the exit code: 0, or 1 after a `fatal` line when it raised (a bad
    `log_level` or `logging_format` exits with status 2 before anything runs)."""
    logs.setup(component, log_level, fmt=logging_format)
    try:
        if event_loop == "uvloop":
            import uvloop  # only kproxy's userspace mode runs on it: the other daemons need not load it
            uvloop.run(amain())
        else:
            asyncio.run(amain())
    except Exception as e:
        log.error("fatal", extra={"error": str(e)})
        return 1
    return 0


def serve(stop: Callable[[], None], registry: metrics.Registry, health: Callable[[], tuple[bool, str]],
          address: str | None) -> None:
    """On the running loop: SIGTERM and SIGINT call `stop()`; /metrics and /healthz are served on
    "host:port" `address` (None: no endpoint)."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    if address is not None:
        metrics.serve(registry, address, health)


async def wait_synced(informers: Iterable[Informer], stopping: asyncio.Event, poll: float = 1.0) -> bool:
    """Wait until every informer has listed: True; False once `stopping` is seen set (it is looked
    at every `poll` seconds while an informer has not listed yet)."""
    log.info("waiting for the informers to sync")
    for inf in informers:
        while not await inf.wait_synced_async(poll):
            if stopping.is_set():
                return False
    return True
