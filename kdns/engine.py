"""The one thread that owns kdns's UDP sockets: readiness handlers, a periodic tick, submitted calls.

`thread` mode runs its own epoll loop on a dedicated thread: a wake-up costs one epoll_wait, and
each readable socket is drained in a loop of non-blocking reads (one wake-up serves a whole batch
of datagrams; the final EAGAIN is the only wasted call). Python's stdlib has no recvmmsg, but the
batch loop gets most of its benefit. `loop` mode hands the same handlers to the asyncio loop
(add_reader, call_later, call_soon_threadsafe), for embedding and comparison.

Everything that touches the forwarder (its sockets, flights, cache) runs on this thread; other
threads `submit` work to it. Handlers must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("knet.kdns")
TICK = 0.05  # seconds between ticks (flight timeouts, health checks, prefetch): the timeout resolution


class Engine:
    def __init__(self, mode: str = "thread", loop: asyncio.AbstractEventLoop | None = None) -> None:
        if mode not in ("thread", "loop"):
            raise ValueError(f"udp mode {mode!r}: loop or thread")
        self.mode = mode
        self.loop = loop
        self.handlers: dict[int, Callable[[], None]] = {}
        self.ticks: list[Callable[[float], None]] = []
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.queue: deque[tuple[Callable[..., None], tuple]] = deque()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.ident: int | None = None
        self.epoll: select.epoll | None = None
        self.wake_fd = -1
        self._tick_handle: asyncio.TimerHandle | None = None

    # --- setup -----------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        if self.mode == "thread":
            self.epoll = select.epoll()
            self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.epoll.register(self.wake_fd, select.EPOLLIN)
            for fd in self.handlers:
                self.epoll.register(fd, select.EPOLLIN)
            self.thread = threading.Thread(target=self._run, name="kdns udp", daemon=True)
            self.thread.start()
        else:
            self.ident = threading.get_ident()
            for fd, handler in self.handlers.items():
                loop.add_reader(fd, handler)
            self._tick_handle = loop.call_later(TICK, self._loop_tick)

    def on_thread(self) -> bool:
        return threading.get_ident() == self.ident

    def add_reader(self, fd: int, handler: Callable[[], None]) -> None:
        """Call `handler` (on the engine thread) whenever `fd` is readable. From the engine thread,
        or before start."""
        self.handlers[fd] = handler
        if self.epoll is not None:
            self.epoll.register(fd, select.EPOLLIN)
        elif self.mode == "loop" and self.loop is not None and self.ident is not None:
            self.loop.add_reader(fd, handler)

    def remove_reader(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is None:
            return
        if self.epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
        elif self.mode == "loop" and self.loop is not None:
            self.loop.remove_reader(fd)

    def every_tick(self, fn: Callable[[float], None]) -> None:
        self.ticks.append(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread after `delay` seconds (resolution: TICK). Engine thread only."""
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.seq), fn))

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        """Run fn(*args) on the engine thread soon; from any thread."""
        if self.mode == "loop":
            if self.loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                    self.loop.call_soon_threadsafe(fn, *args)
            return
        self.queue.append((fn, args))
        if self.wake_fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.wake_fd, 1)

    def stop(self) -> None:
        self.stopping = True
        if self.mode == "thread":
            if self.wake_fd >= 0:
                with contextlib.suppress(OSError):
                    os.eventfd_write(self.wake_fd, 1)
            if self.thread is not None and self.thread is not threading.current_thread():
                self.thread.join(5)
            if self.epoll is not None:
                self.epoll.close()
            if self.wake_fd >= 0:
                os.close(self.wake_fd)
                self.wake_fd = -1
        else:
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            if self.loop is not None and not self.loop.is_closed():
                for fd in list(self.handlers):
                    self.loop.remove_reader(fd)

    # --- running ---------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            fn = heapq.heappop(timers)[2]
            self._safely(fn)
        for fn in self.ticks:
            self._safely(fn, now)

    @staticmethod
    def _safely(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a bug costs one callback, never the serving thread
            log.exception("kdns engine callback %r failed", fn)

    def _loop_tick(self) -> None:
        if self.stopping:
            return
        self._tick(time.monotonic())
        assert self.loop is not None
        self._tick_handle = self.loop.call_later(TICK, self._loop_tick)

    def _run(self) -> None:
        self.ident = threading.get_ident()
        assert self.epoll is not None
        poll = self.epoll.poll
        handlers = self.handlers
        queue = self.queue
        wake = self.wake_fd
        monotonic = time.monotonic
        next_tick = monotonic() + TICK
        while not self.stopping:
            try:
                events = poll(max(0.0, next_tick - monotonic()))
            except OSError:
                if self.stopping:
                    return
                raise
            for fd, _ in events:
                if fd == wake:
                    with contextlib.suppress(OSError):
                        os.eventfd_read(wake)
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    try:
                        handler()
                    except Exception:
                        log.exception("kdns socket handler failed")
            while queue:
                fn, args = queue.popleft()
                self._safely(fn, *args)
            now = monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + TICK
