"""client-go's controller pattern, small: informer callbacks put keys in a de-duplicating queue,
one worker thread per controller syncs a key at a time (so one controller never races itself),
a failed sync is retried with backoff, and `Expectations` stop a controller from acting twice on
a cache that has not yet seen its own writes."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knet.kube.models import KubeObject
    from knet.kube.recorder import EventRecorder

log = logging.getLogger("lab.controllers")


class WorkQueue:
    """Keys to sync. A key added while queued is not added twice; a key added while being synced
    is synced once more afterwards (the change may have come after the sync read the cache)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._delayed: list[tuple[float, str]] = []
        self._closed = False

    def add(self, key: str) -> None:
        with self._cond:
            if self._add_locked(key):
                self._cond.notify()

    def _add_locked(self, key: str) -> bool:
        """With the lock held: mark `key` dirty if it is being synced, else queue it unless it is
        queued already. True when it was queued now."""
        if key in self._processing:
            self._dirty.add(key)
            return False
        if key in self._queued:
            return False
        self._queued.add(key)
        self._queue.append(key)
        return True

    def add_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)

    def add_after(self, key: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> str | None:
        """The next key (marked as processing until `done`), or None on close/timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, key = heapq.heappop(self._delayed)
                    self._add_locked(key)
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._closed:
                    return None
                wait = None if deadline is None else deadline - now
                if self._delayed:
                    until = self._delayed[0][0] - now
                    wait = until if wait is None else min(wait, until)
                if wait is not None and wait <= 0:
                    if deadline is not None and now >= deadline:
                        return None
                    continue
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if self._add_locked(key):  # no longer processing: queued unless it is already
                    self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)


class Expectations:
    """Names of objects an owner has created or deleted that the informer has not shown yet.

    Until they show (or `timeout` passes: an event may have been lost), a sync of that owner would
    count from a stale cache and create or delete again, so it waits."""

    def __init__(self, timeout: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._adds: dict[str, tuple[set[str], float]] = {}
        self._dels: dict[str, tuple[set[str], float]] = {}

    def expect(self, owner: str, adds: Iterable[str] = (), deletes: Iterable[str] = ()) -> None:
        now = self.clock()
        with self._lock:
            for table, names in ((self._adds, set(adds)), (self._dels, set(deletes))):
                if names:
                    have = table.get(owner, (set(), now))[0]
                    table[owner] = (have | names, now)

    def satisfied(self, owner: str, present: Callable[[str], bool]) -> bool:
        now = self.clock()
        with self._lock:
            for table, want_present in ((self._adds, True), (self._dels, False)):
                entry = table.get(owner)
                if entry is None:
                    continue
                names, since = entry
                left = {n for n in names if present(n) != want_present}
                if left and now - since < self.timeout:
                    table[owner] = (left, since)
                    return False
                table.pop(owner, None)
            return True

    def forget(self, owner: str) -> None:
        with self._lock:
            self._adds.pop(owner, None)
            self._dels.pop(owner, None)


class Controller:
    """A worker thread syncing keys from its queue; subclasses implement `sync(key)` and register
    informer handlers that call `enqueue`. `resync` seconds: every key of `all_keys()` is synced
    again now and then, so a missed event or a failed write heals by itself."""

    name = "controller"
    source = ""  # the component its events come from (kube-controller-manager's controller names)
    resync = 60.0

    def __init__(self) -> None:
        self.queue = WorkQueue()
        self._failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.syncs = 0
        self.errors = 0
        self.recorder: EventRecorder | None = None

    def event(self, obj: KubeObject, type_: str, reason: str, message: str, kind: str, api_version: str,
              component: str = "") -> None:
        """Record an event about `obj` as this controller (nothing without a recorder: tests)."""
        if self.recorder is not None:
            self.recorder.event(obj, type_, reason, message, kind=kind, api_version=api_version,
                                component=component or self.source or self.name)

    def enqueue(self, key: str | None) -> None:
        if key:
            self.queue.add(key)

    def all_keys(self) -> list[str]:
        return []

    def sync(self, key: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for target, name in ((self._work, "worker"), (self._resync, "resync")):
            t = threading.Thread(target=target, name=f"{self.name} {name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                self.sync(key)
                self._failures.pop(key, None)
                self.syncs += 1
            except Exception as e:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                self.errors += 1
                delay = min(0.2 * 2 ** (n - 1), 30.0)
                log.warning("%s: sync %s failed (%s: %s); retry %d in %.1fs", self.name, key, type(e).__name__,
                            e, n, delay, exc_info=n >= 5)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

    def _resync(self) -> None:
        while not self._stop.wait(self.resync):
            try:
                self.queue.add_all(self.all_keys())
            except Exception:
                log.exception("%s: resync failed", self.name)
