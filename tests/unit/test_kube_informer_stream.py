"""The informer over HTTP against a small in-process fake of the list/watch protocol on 127.0.0.1:
list, watch events, ERROR 410 and HTTP 410 relists with a synthesized diff, a server restart,
malformed objects, stop(). (The lab API server itself: tests/integration/kube.)"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from knet.kube import Backoff, Informer, InformerFactory, make_configuration, new_api_client
from knet.kube.models import Service
from tests import informer_recorder


class FakeAPI:
    """Services in namespace "default"; an event log with etcd-like revisions and compaction."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict] = {}
        self.log: list[tuple[int, str, dict]] = []
        self.compacted = 0  # watching from a revision below this: 410
        self.gone_as_status = False  # 410 as the HTTP status (else: an ERROR event in the stream)
        self.requests: list[dict] = []
        self.generation = 0  # bumping it drops every open stream
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def put(self, name: str, spec: dict | None = None, raw: dict | None = None) -> None:
        with self.cond:
            self.rv += 1
            typ = "MODIFIED" if name in self.objects else "ADDED"
            obj = raw or {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
                          "spec": spec or {"ports": [{"port": 80}]}}
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[name] = obj
            self.log.append((self.rv, typ, obj))
            self.cond.notify_all()

    def delete(self, name: str) -> None:
        with self.cond:
            self.rv += 1
            obj = dict(self.objects.pop(name))
            obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.rv)}
            self.log.append((self.rv, "DELETED", obj))
            self.cond.notify_all()

    def compact(self) -> None:
        with self.cond:
            self.compacted = self.rv
            self.cond.notify_all()

    def drop_streams(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append({"path": url.path, "auth": self.headers.get("Authorization"), **q})
                if q.get("watch") in ("true", "True", "1"):
                    return self.watch(int(q.get("resourceVersion") or 0), int(q.get("timeoutSeconds", 30)))
                with fake.cond:
                    body = {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": str(fake.rv)},
                            "items": list(fake.objects.values())}
                self.send_json(200, body)

            def send_json(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def drop(self):
                # An abrupt end (no terminating chunk), as when a server dies.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def chunk(self, obj):
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def watch(self, since, timeout):
                gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                    "message": "too old resource version"}}
                if since < fake.compacted and fake.gone_as_status:
                    return self.send_json(410, gone["object"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                gen, last, deadline = fake.generation, since, time.monotonic() + timeout
                while time.monotonic() < deadline:
                    with fake.cond:
                        if fake.generation != gen:
                            return self.drop()
                        if last < fake.compacted:
                            if fake.gone_as_status:
                                return self.drop()
                            self.chunk(gone)
                            break
                        pending = [(rv, t, o) for rv, t, o in fake.log if rv > last]
                        if not pending:
                            fake.cond.wait(0.1)
                            continue
                    for rv, typ, obj in pending:
                        self.chunk({"type": typ, "object": obj})
                        last = rv
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.drop_streams()
        self.server.shutdown()
        self.server.server_close()

    def watches(self) -> list[dict]:
        return [r for r in self.requests if r.get("watch")]

    def lists(self) -> list[dict]:
        return [r for r in self.requests if not r.get("watch")]


@pytest.fixture
def fake():
    f = FakeAPI()
    f.put("a")
    f.put("b", {"ports": [{"port": 81}]})
    f.start()
    yield f
    f.stop()


class Recorder(informer_recorder.Recorder):
    """Adds and updates with their resourceVersions."""

    timeout = 10.0

    def add(self, new):
        self._rec(("add", new.name, new.metadata.resource_version))

    def update(self, old, new):
        self._rec(("update", new.name, old.metadata.resource_version, new.metadata.resource_version))


def make_informer(fake: FakeAPI, rec: Recorder, **kw) -> Informer[Service]:
    api = new_api_client(configuration=make_configuration(f"http://127.0.0.1:{fake.port}", token="sekret"))
    kw.setdefault("backoff", Backoff(initial=0.05, maximum=0.2))
    return rec.informer(api, Service, **kw)


def test_list_then_watch_add_update_delete(fake):
    rec = Recorder()
    inf = make_informer(fake, rec, namespace="default", label_selector={"app": "web"}).start()
    try:
        assert inf.wait_synced(5)
        assert sorted(inf.keys()) == ["default/a", "default/b"]
        assert inf.get("b", "default").spec.ports[0].port == 81
        assert sorted(rec.events) == [("add", "a", "101"), ("add", "b", "102")]
        fake.put("c")
        fake.put("a", {"ports": [{"port": 8080}]})
        fake.delete("b")
        assert rec.wait_for(5)[2:] == [("add", "c", "103"), ("update", "a", "101", "104"), ("delete", "b")]
        assert inf.get("a", "default").spec.ports[0].port == 8080 and inf.get("b", "default") is None
        assert inf.resource_version == "105"
        w = fake.watches()[0]
        assert w["path"] == "/api/v1/namespaces/default/services" and w["labelSelector"] == "app=web"
        assert w["resourceVersion"] == "102" and w["allowWatchBookmarks"] in ("true", "True")
        assert w["auth"] == "Bearer sekret"
    finally:
        inf.stop()


def test_malformed_objects_are_skipped(fake, caplog):
    fake.put("bad", {"ports": [{"port": 99999}]})
    rec = Recorder()
    inf = make_informer(fake, rec).start()
    try:
        assert inf.wait_synced(5)
        assert sorted(inf.keys()) == ["default/a", "default/b"]
        fake.put("worse", {"type": "Nope"})
        fake.put("a", {"ports": [{"port": "eighty"}]})  # a cached object becomes malformed: gone
        fake.put("c")
        events = rec.wait_for(4)
        assert events[2:] == [("delete", "a"), ("add", "c", "106")]
        assert sorted(inf.keys()) == ["default/b", "default/c"]
        text = caplog.text
        assert "skipping malformed Service default/bad" in text and "skipping malformed Service default/worse" in text
    finally:
        inf.stop()


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-410"])
def test_410_relists_and_synthesizes_the_diff(fake, as_status):
    rec = Recorder()
    inf = make_informer(fake, rec).start()
    try:
        assert inf.wait_synced(5)
        while not fake.watches():
            time.sleep(0.01)
        fake.gone_as_status = as_status
        with fake.cond:  # all at once, then compacted: the watch never sees these events
            fake.delete("a")
            fake.put("b", {"ports": [{"port": 9000}]})
            fake.put("n")
            fake.compact()
        events = rec.wait_for(5)
        assert events[2:] == [("delete", "a"), ("update", "b", "102", "104"), ("add", "n", "105")]
        assert len(fake.lists()) == 2 and inf.resource_version == "105"
        fake.put("after")  # and the new watch works
        assert rec.wait_for(6)[5] == ("add", "after", "106")
    finally:
        inf.stop()


def test_reconnects_after_server_restart_without_relisting(fake):
    rec = Recorder()
    inf = make_informer(fake, rec).start()
    try:
        assert inf.wait_synced(5)
        fake.stop()
        fake.put("while-down")
        time.sleep(0.3)  # a few failed reconnects
        fake.start()  # same port, same history
        assert rec.wait_for(3)[2] == ("add", "while-down", "103")
        assert len(fake.lists()) == 1  # resumed from its resourceVersion, no relist
        assert fake.watches()[-1]["resourceVersion"] == "102"
    finally:
        inf.stop()


def test_stop_is_prompt_during_a_blocked_watch(fake):
    inf = make_informer(fake, Recorder()).start()
    assert inf.wait_synced(5)
    while not fake.watches():
        time.sleep(0.01)
    t0 = time.monotonic()
    inf.stop()
    assert time.monotonic() - t0 < 2 and not inf._thread.is_alive()


def test_failing_callback_and_late_handler(fake, caplog):
    def boom(obj):
        raise RuntimeError("component bug")

    api = new_api_client(configuration=make_configuration(f"http://127.0.0.1:{fake.port}"))
    inf = Informer(api, "Service", on_add=boom).start()
    try:
        assert inf.wait_synced(5)
        late = Recorder()
        inf.add_handler(on_add=late.add, on_delete=late.delete)
        assert sorted(late.events) == [("add", "a", "101"), ("add", "b", "102")]  # replayed
        fake.delete("a")
        assert late.wait_for(3)[2] == ("delete", "a")
        assert "callback" in caplog.text and "component bug" in caplog.text
    finally:
        inf.stop()


def test_unreachable_server_never_syncs_and_stops(fake):
    fake.stop()
    inf = make_informer(fake, Recorder()).start()
    assert not inf.wait_synced(0.5)
    inf.stop()
    fake.start()  # for the fixture's teardown


def test_factory_shares_informers(fake):
    api = new_api_client(configuration=make_configuration(f"http://127.0.0.1:{fake.port}"))
    factory = InformerFactory(api, backoff=Backoff(0.05, 0.2))
    a = factory.informer(Service)
    assert factory.informer("Service") is a
    assert factory.informer(Service, namespace="default") is not a
    factory.start()
    try:
        assert factory.wait_synced(5)
        late = factory.informer(Service, label_selector="x=y")  # started at once
        assert late.wait_synced(5)
        assert len(a.list()) == 2 and len(a.list(selector={"nope": "x"})) == 0
    finally:
        factory.stop()
    assert all(not i._thread.is_alive() for i in factory.informers)


class _Scripted:
    """Stands in for the informer's HTTP requests: each call takes the next step (an exception to
    raise, or the body of a list or watch response) and records the waits the informer chose."""

    class Response:
        def __init__(self, data: bytes) -> None:
            self.data, self._chunks = data, [data]

        def read1(self, n):
            return self._chunks.pop() if self._chunks else b""

        def release_conn(self):
            pass

        def close(self):
            pass

    def __init__(self, inf: Informer, steps: list) -> None:
        self.inf, self.steps, self.waits = inf, list(steps), []
        inf._request = self.request  # type: ignore[method-assign]
        inf._sleep = self.waits.append  # type: ignore[method-assign]

    def request(self, **kwargs):
        if not self.steps:
            self.inf._stop.set()
            raise RuntimeError("script done")
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return self.Response(json.dumps(step).encode())


def refused() -> Exception:
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as e:
            raise NewConnectionError(None, "Failed to establish a new connection") from e  # type: ignore[arg-type]
    except NewConnectionError as e:
        return MaxRetryError(None, "/api/v1/services", e)  # type: ignore[arg-type]


def test_backoff_restarts_after_a_list_or_watch_and_refused_connections_retry_within_a_second():
    from kubernetes.client.exceptions import ApiException

    inf = Informer(None, Service, backoff=Backoff(initial=2, maximum=30, rng=lambda: 1.0))  # type: ignore[arg-type]
    listing = {"metadata": {"resourceVersion": "5"}, "items": []}
    event = {"type": "ADDED", "object": {"metadata": {"name": "x", "namespace": "d", "resourceVersion": "6"}}}
    script = _Scripted(inf, [
        *[ApiException(status=503)] * 2,  # the list fails: a live server failing, exponential backoff
        listing,  # listed: the next failure starts from the initial delay again
        *[ApiException(status=503)] * 3,  # the watch fails
        *[refused()] * 5,  # the server is away (restarting): at most a second between attempts
        event,  # back: a watch that works (and ends; the informer watches again from "6")
        ApiException(status=503),
    ])
    inf._run()
    assert script.waits == [2, 4, 2, 4, 8, 1.0, 1.0, 1.0, 1.0, 1.0, 2]
    assert inf.get("x", "d") is not None and inf.resource_version == "6"
