"""core/v1 Events, recorded as client-go's event recorder (tools/record) records them:

    recorder = EventRecorder(api, "kubelet", host="node1")
    recorder.event(pod, "Normal", "Started", "Started container web", field_path="spec.containers{web}")
    recorder.stop()   # flushes what is queued

Callers never wait for the API: events are queued and written by one thread. Before writing,
the correlator (pure, `Correlator`) does what client-go's EventCorrelator does:
- aggregation: more than 10 events that differ only in their message, for one object and reason
  within 10 minutes, become one "(combined from similar events): ..." event;
- deduplication: an event equal to one written before (same source, object, type, reason,
  message) is not written again: that one's `count` goes up and its `lastTimestamp` (and
  `series`) moves, by a PATCH (re-created if it expired meanwhile);
- a spam filter per source and object: a token bucket of 25 events, refilled by one every five
  minutes; what exceeds it is dropped.
Events of cluster-scoped objects (a Node) go to the `default` namespace, as client-go does.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from knet.kube import client
from knet.kube.models import KubeObject

log = logging.getLogger("knet.kube.recorder")
NORMAL, WARNING = "Normal", "Warning"
MAX_SIMILAR = 10            # client-go's defaultAggregateMaxEvents
SIMILAR_WINDOW = 600.0      # defaultAggregateIntervalInSeconds
SPAM_BURST = 25             # defaultSpamBurst
SPAM_REFILL = 1.0 / 300     # defaultSpamQPS: one event every five minutes
CACHE_SIZE = 4096           # maxLruCacheEntries
COMBINED = "(combined from similar events): "


def reference(obj: KubeObject | dict[str, Any], api_version: str = "", kind: str = "",
              field_path: str = "") -> dict[str, Any]:
    """The ObjectReference an event is about (`involvedObject`)."""
    raw = obj.to_dict() if isinstance(obj, KubeObject) else obj
    meta = raw.get("metadata") or {}
    ref = {"kind": kind or raw.get("kind") or type(obj).__name__, "namespace": meta.get("namespace", ""),
           "name": meta.get("name", ""), "uid": meta.get("uid", ""),
           "apiVersion": api_version or raw.get("apiVersion") or "v1",
           "resourceVersion": meta.get("resourceVersion", "")}
    if field_path:
        ref["fieldPath"] = field_path
    return {k: v for k, v in ref.items() if v}


def micro_time(t: float) -> str:
    """metav1.MicroTime: RFC3339 with microseconds."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timestamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Write:
    """What to send: a new event, or a patch of one written before."""
    namespace: str
    name: str
    body: dict[str, Any]             # the whole event (create; and the fallback of a failed patch)
    patch: dict[str, Any] | None     # None: create
    key: tuple                       # the dedup key (to forget it when the write fails)


@dataclass
class _Seen:
    name: str
    count: int
    first: str


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    last: float = 0.0


@dataclass
class _Bucket:
    tokens: float
    at: float


class Correlator:
    """The aggregation, deduplication and spam decisions (pure: the clock is passed in)."""

    def __init__(self, max_similar: int = MAX_SIMILAR, similar_window: float = SIMILAR_WINDOW,
                 burst: int = SPAM_BURST, refill: float = SPAM_REFILL, cache_size: int = CACHE_SIZE) -> None:
        self.max_similar, self.similar_window = max_similar, similar_window
        self.burst, self.refill, self.cache_size = burst, refill, cache_size
        self.similar: collections.OrderedDict[tuple, _Similar] = collections.OrderedDict()
        self.seen: collections.OrderedDict[tuple, _Seen] = collections.OrderedDict()
        self.buckets: collections.OrderedDict[tuple, _Bucket] = collections.OrderedDict()

    @staticmethod
    def _object_key(event: dict[str, Any]) -> tuple:
        src, obj = event.get("source") or {}, event["involvedObject"]
        return (src.get("component", ""), src.get("host", ""), obj.get("kind", ""), obj.get("namespace", ""),
                obj.get("name", ""), obj.get("uid", ""), obj.get("apiVersion", ""))

    def _lru(self, cache: collections.OrderedDict, key: tuple, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _allow(self, key: tuple, now: float) -> bool:
        bucket = self.buckets.get(key) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.refill)
        bucket.at = now
        self._lru(self.buckets, key, bucket)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def observe(self, event: dict[str, Any], now: float, make_name: Callable[[str, float], str]) -> Write | None:
        """The write an event turns into (None: dropped by the spam filter)."""
        obj_key = self._object_key(event)
        if not self._allow(obj_key, now):
            return None
        aggregate = (*obj_key, event.get("type", ""), event.get("reason", ""))
        similar = self.similar.get(aggregate)
        if similar is None or now - similar.last > self.similar_window:
            similar = _Similar()
        similar.messages.add(event.get("message", ""))
        similar.last = now
        self._lru(self.similar, aggregate, similar)
        key: tuple = (*aggregate, event.get("message", ""))
        if len(similar.messages) > self.max_similar:
            event = {**event, "message": COMBINED + event.get("message", "")}
            key = aggregate
        ns = event["involvedObject"].get("namespace") or "default"
        stamp = timestamp(now)
        seen = self.seen.get(key)
        if seen is not None:
            seen.count += 1
            self.seen.move_to_end(key)
            series = {"count": seen.count, "lastObservedTime": micro_time(now)}
            body = {**event, "metadata": {"name": seen.name, "namespace": ns}, "count": seen.count,
                    "firstTimestamp": seen.first, "lastTimestamp": stamp, "series": series}
            patch = {"count": seen.count, "lastTimestamp": stamp, "message": event.get("message", ""),
                     "series": series}
            return Write(ns, seen.name, body, patch, key)
        name = make_name(event["involvedObject"].get("name", "event"), now)
        self._lru(self.seen, key, _Seen(name, 1, stamp))
        body = {**event, "metadata": {"name": name, "namespace": ns}, "count": 1, "firstTimestamp": stamp,
                "lastTimestamp": stamp}
        return Write(ns, name, body, None, key)

    def forget(self, key: tuple) -> None:
        """A write failed for good: the next equal event starts over with a create."""
        self.seen.pop(key, None)


def event_name(object_name: str, t: float) -> str:
    """`<object>.<unix nanoseconds in hex>`, as client-go names events."""
    return f"{object_name}.{int(t * 1e9):x}"


class EventRecorder:
    """Records events for one component (source) through one API client, from a thread of its
    own; `event()` returns at once (an event that does not fit in the queue is dropped)."""

    def __init__(self, api: Any, component: str, host: str = "", *, queue_size: int = 1000,
                 clock: Callable[[], float] = time.time, correlator: Correlator | None = None) -> None:
        self.api, self.component, self.host, self.clock = api, component, host, clock
        self.correlator = correlator or Correlator()
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name=f"events {component}", daemon=True)
        self._thread.start()

    def event(self, obj: KubeObject | dict[str, Any], type_: str, reason: str, message: str, *,
              api_version: str = "", kind: str = "", field_path: str = "", component: str = "") -> None:
        """Record an event about `obj`; `component` names another source than the recorder's (one
        process running several controllers shares one recorder, each reporting as itself)."""
        ref = reference(obj, api_version, kind, field_path)
        component = component or self.component
        source = {"component": component, **({"host": self.host} if self.host else {})}
        event = {"apiVersion": "v1", "kind": "Event", "involvedObject": ref, "reason": reason,
                 "message": message[:1024], "type": type_, "source": source,
                 "reportingComponent": component, "reportingInstance": self.host}
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then end the thread."""
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (event := self.queue.get()) is not None:
            write = self.correlator.observe(event, self.clock(), event_name)
            if write is None:
                self.dropped += 1
                continue
            try:
                self._send(write)
                self.written += 1
            except Exception as e:  # the API being away must not take the component down
                self.correlator.forget(write.key)
                self.dropped += 1
                log.debug("event %s/%s not recorded: %s", write.namespace, write.name, e)

    def _send(self, write: Write, tries: int = 3) -> None:
        for attempt in range(tries):
            try:
                if write.patch is not None:
                    try:
                        client.patch(self.api, "Event", write.name, write.patch, write.namespace)
                        return
                    except client.ApiException as e:
                        if e.status != 404:
                            raise
                        # expired (the event TTL) or deleted: start it over
                        write = Write(write.namespace, write.name, {**write.body, "count": 1, "series": None},
                                      None, write.key)
                client.create(self.api, "Event", {k: v for k, v in write.body.items() if v is not None},
                              write.namespace)
                return
            except client.ApiException as e:
                if e.status == 409 and write.patch is None:
                    return  # written by an earlier try whose answer got lost
                if e.status is not None and 400 <= e.status < 500 and e.status != 429:
                    raise
                if attempt == tries - 1:
                    raise
            except OSError:
                if attempt == tries - 1:
                    raise
            time.sleep(1.0)
