"""Which Services changed since the last sync, and since when (kube-proxy's change trackers).

The informers' callbacks (on their threads) note the Service of every Service or EndpointSlice
event here; the sync thread takes the whole set at the start of a sync and recomputes only those
Services. Per Service the tracker keeps the earliest time a pending change was made, for
kube-proxy's network programming latency: the EndpointSlice's
`endpoints.kubernetes.io/last-change-trigger-time` annotation when it has one (the time of the
Pod or Service change that made the EndpointSlice controller write the slice), else the time
kproxy saw the event. As in kube-proxy, a trigger time from before kproxy started is not used
(a restart would report the age of the cluster), and the initial list is start-up, not a change:
events delivered before `start_recording()` carry no time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from knet.kube.models import SERVICE_NAME_LABEL, EndpointSlice, Service, object_key

TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


def parse_trigger_time(value: str | None) -> float | None:
    """RFC 3339 (the controller writes Go's RFC3339Nano) -> unix seconds; None if absent or bad."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python's parser takes at most microseconds: cut the fraction to 6 digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[:min(digits, 6)] + rest[digits:]
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None


def slice_service(sl: EndpointSlice) -> str | None:
    name = sl.metadata.labels.get(SERVICE_NAME_LABEL) if sl.metadata.labels else None
    return object_key(sl.metadata.namespace, name) if name else None


class ChangeTracker:
    """Thread-safe set of changed Services with their earliest pending change time."""

    def __init__(self, on_first: Callable[[], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        """`on_first` runs (on the noting thread) when the first change after a `take` arrives:
        the cue to wake the sync loop without one wake-up per event."""
        self.clock = clock
        self.on_first = on_first
        self.started = clock()
        self.recording = False
        self._lock = threading.Lock()
        self._times: dict[str, float | None] = {}  # service key -> earliest change time (None: start-up)
        self._services: set[str] = set()  # services with a pending Service change
        self._endpoints: set[str] = set()  # services with a pending EndpointSlice change
        self.service_events = 0
        self.endpoint_events = 0

    def start_recording(self) -> None:
        """From now on events are changes to time (the initial list is over)."""
        self.recording = True

    def _note(self, keys: Iterable[str], kind: set[str], at: float | None) -> None:
        with self._lock:
            first = not self._times
            for key in keys:
                kind.add(key)
                self._keep_earliest(key, at)
        if first and self.on_first is not None:
            self.on_first()

    def service_changed(self, *services: Service | None) -> None:
        """A Service event (add: (new,), update: (old, new), delete: (old,))."""
        keys = {s.key for s in services if s is not None}
        with self._lock:
            self.service_events += 1
        self._note(keys, self._services, self.clock() if self.recording else None)

    def slice_changed(self, *slices: EndpointSlice | None) -> None:
        """An EndpointSlice event: its Service (and, if it moved, the one it left) changed."""
        keys = {k for s in slices if s is not None for k in [slice_service(s)] if k}
        at = None
        if self.recording:
            at = self.clock()
            for s in slices:
                if s is not None:
                    t = parse_trigger_time(s.metadata.annotations.get(TRIGGER_TIME))
                    if t is not None and t >= self.started:
                        at = min(at, t)
        with self._lock:
            self.endpoint_events += 1
        if keys:
            self._note(keys, self._endpoints, at)

    def _keep_earliest(self, key: str, at: float | None) -> None:
        """(Lock held.) A pending change of `key` at `at`: the earliest time counts."""
        if key not in self._times:
            self._times[key] = at
            return
        have = self._times[key]
        if at is not None and (have is None or at < have):
            self._times[key] = at

    def take(self) -> dict[str, float | None]:
        """Every pending Service with its earliest change time; the tracker starts empty again."""
        with self._lock:
            taken, self._times = self._times, {}
            self._services, self._endpoints = set(), set()
        return taken

    def give_back(self, taken: dict[str, float | None]) -> None:
        """A sync failed: its Services are pending again, with their original times."""
        with self._lock:
            for key, at in taken.items():
                self._keep_earliest(key, at)
                self._endpoints.add(key)

    def pending(self) -> tuple[int, int]:
        """(services with pending Service changes, services with pending EndpointSlice changes)."""
        with self._lock:
            return len(self._services), len(self._endpoints)

    def __len__(self) -> int:
        with self._lock:
            return len(self._times)
