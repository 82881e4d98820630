"""Informer handlers that log what they are called with, for the tests that wait for an informer's
events (against the lab API server in tests/integration/kube, against an in-process fake in
tests/unit/test_kube_informer_stream.py)."""

from __future__ import annotations

import threading

from knet.kube import Informer
from knet.kube.models import Service


class Recorder:
    """on_add / on_update / on_delete as tuples ("add", name), ("update", name, old, new),
    ("delete", name); a subclass may log other details after the name."""

    timeout = 15.0  # wait_for's default

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.cond = threading.Condition()

    def add(self, new):
        self._rec(("add", new.name))

    def update(self, old, new):
        self._rec(("update", new.name, old, new))

    def delete(self, old):
        self._rec(("delete", old.name))

    def _rec(self, ev):
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float | None = None) -> list[tuple]:
        """The events once there are `n`; fails with what came (objects left out) after `timeout`."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.events) >= n,
                                      self.timeout if timeout is None else timeout), \
                [tuple(x for x in e if isinstance(x, str)) for e in self.events]
            return list(self.events)

    def names(self, start: int = 0) -> list[tuple[str, str]]:
        with self.cond:
            return [(e[0], e[1]) for e in self.events[start:]]

    def informer(self, api, kind=Service, **kw) -> Informer:
        return Informer(api, kind, on_add=self.add, on_update=self.update, on_delete=self.delete, **kw)
