"""Feed a daemon's informers without an API server, for the unit tests that count whole-cache
scans in a daemon's event handling: the objects go through the informer's own watch-event entry
point (cache, indexes, callbacks), exactly as a watch stream would deliver them."""

from __future__ import annotations

import asyncio

from knet.kube import Informer
from knet.kube.models import KubeObject


def feed(inf: Informer, obj: KubeObject) -> None:
    """A watch ADDED/MODIFIED event for `obj`."""
    inf._apply("MODIFIED" if inf.get_by_key(obj.key) else "ADDED", obj.key, obj.to_dict())


def remove(inf: Informer, obj: KubeObject) -> None:
    inf._apply("DELETED", obj.key, obj.to_dict())


def scans(informers) -> dict[str, int]:
    """Whole-cache scans so far, per informer."""
    return {inf.name: inf.scans for inf in informers}


async def settle() -> None:
    """Let the callbacks the informers queued on the running loop (threadsafe) run."""
    for _ in range(3):
        await asyncio.sleep(0)
