"""The pure parts of the informer: events, the relist diff, backoff, reading a watch stream."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from knet.kube.models import KubeObject

M = TypeVar("M", bound=KubeObject)
ADD, UPDATE, DELETE = "add", "update", "delete"


@dataclass(frozen=True)
class Event(Generic[M]):
    type: str  # ADD / UPDATE / DELETE
    old: M | None
    new: M | None

    @property
    def obj(self) -> M:
        return self.new if self.new is not None else self.old  # type: ignore[return-value]  # one is always set


def relist_diff(old: Mapping[str, M], new: Mapping[str, M]) -> list[Event[M]]:
    """The events that turn cache `old` into `new` (both keyed namespace/name).

    Deletes come first (a component frees what vanished before it takes on what is new), then
    updates and adds in `new`'s order. An object is changed when its resourceVersion differs
    (without resourceVersions: when its content differs). The same name with another uid was
    deleted and re-created while we were not watching: that is a delete and an add.
    """
    events: list[Event[M]] = [Event(DELETE, obj, None) for key, obj in old.items() if key not in new]
    for key, obj in new.items():
        prev = old.get(key)
        if prev is None:
            events.append(Event(ADD, None, obj))
        elif prev.metadata.uid and obj.metadata.uid and prev.metadata.uid != obj.metadata.uid:
            events += [Event(DELETE, prev, None), Event(ADD, None, obj)]
        elif _changed(prev, obj):
            events.append(Event(UPDATE, prev, obj))
    return events


def _changed(a: KubeObject, b: KubeObject) -> bool:
    ra, rb = a.metadata.resource_version, b.metadata.resource_version
    return ra != rb if (ra or rb) else a != b


class Backoff:
    """Exponential backoff with "equal jitter": each delay is between half and all of the current
    step, so many clients reconnecting after an API server restart spread out, yet none retries
    at once in a tight loop."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial, self.maximum, self.factor, self.rng = initial, maximum, factor, rng
        self._step = initial

    def next(self) -> float:
        step = self._step
        self._step = min(step * self.factor, self.maximum)
        return step / 2 + self.rng() * step / 2

    def reset(self) -> None:
        self._step = self.initial


def lines(resp: Any) -> Iterator[bytes]:
    """Newline-delimited JSON from a streaming response. read1 returns what has arrived (a chunk
    of a chunked response, or whatever the socket has), so each event is handled as it comes
    instead of after the server closes the stream."""
    buf = b""
    read = getattr(resp, "read1", None)
    chunks = iter(lambda: read(65536), b"") if read else resp.stream(None)
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf.strip():
        yield buf


def threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any]) -> Callable[..., None]:
    """Wrap a callback so it runs on an asyncio loop instead of the informer thread."""
    def call(*args: Any) -> None:
        loop.call_soon_threadsafe(fn, *args)

    return call
