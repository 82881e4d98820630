"""knet.kube against the lab's API server and the real kube-apiserver (a real etcd behind each),
configured from a kubeconfig with a CA and a bearer token as on a real cluster: initial list,
add/update/delete events, selectors, a malformed object written straight into etcd, the watch
resuming after an API server restart, and a 410 relist after etcd compaction."""

from __future__ import annotations

import logging
import time

import pytest

from knet.kube import Backoff, InformerFactory
from knet.kube import client as kc
from knet.kube.client import ApiException
from knet.kube.models import Pod, Service, parse
from tests.informer_recorder import Recorder

pytestmark = pytest.mark.integration


def svc(name: str, port: int = 80, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"ports": [{"port": port, "targetPort": "http"}], "selector": {"app": name}}}


def pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "x"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost"}]}}


def test_initial_list_then_add_update_delete(api, ns):
    for name in ("a", "b", "c"):
        kc.create(api, Service, svc(name), ns)
    rec = Recorder()
    inf = rec.informer(api, namespace=ns).start()
    try:
        assert inf.wait_synced(15)
        assert sorted(inf.keys()) == [f"{ns}/a", f"{ns}/b", f"{ns}/c"]
        assert sorted(rec.names()) == [("add", "a"), ("add", "b"), ("add", "c")]
        a = inf.get("a", ns)
        assert a.cluster_ips and a.spec.ports[0].target_port == "http" and a.metadata.uid

        kc.create(api, Service, svc("d"), ns)
        kc.patch(api, Service, "a", {"metadata": {"labels": {"tier": "web"}}}, ns)
        kc.delete(api, Service, "b", ns)
        events = rec.wait_for(6)
        assert [(e[0], e[1]) for e in events[3:]] == [("add", "d"), ("update", "a"), ("delete", "b")]
        _, _, old, new = events[4]
        assert old.labels == {} and new.labels == {"tier": "web"}
        assert int(new.metadata.resource_version) > int(old.metadata.resource_version)
        assert sorted(inf.keys()) == [f"{ns}/a", f"{ns}/c", f"{ns}/d"]
        assert inf.get("a", ns).labels == {"tier": "web"} and inf.get("b", ns) is None
        assert int(inf.resource_version) >= int(new.metadata.resource_version)
    finally:
        inf.stop()


def test_label_and_field_selectors_scope_the_watch(api, ns):
    kc.create(api, Service, svc("web1", labels={"tier": "web"}), ns)
    kc.create(api, Service, svc("db1", labels={"tier": "db"}), ns)
    rec, prec = Recorder(), Recorder()
    factory = InformerFactory(api, namespace=ns)
    services = factory.informer(Service, label_selector={"tier": "web"})
    services.add_handler(on_add=rec.add, on_update=rec.update, on_delete=rec.delete)
    pods = factory.informer(Pod, field_selector="spec.nodeName=node-a")
    pods.add_handler(on_add=prec.add, on_delete=prec.delete)
    factory.start()
    try:
        assert factory.wait_synced(15)
        assert services.keys() == [f"{ns}/web1"]
        kc.patch(api, Service, "db1", {"metadata": {"labels": {"tier": "web"}}}, ns)  # starts matching
        kc.patch(api, Service, "web1", {"metadata": {"labels": {"tier": "db"}}}, ns)  # stops matching
        rec.wait_for(3)
        assert rec.names() == [("add", "web1"), ("add", "db1"), ("delete", "web1")]
        assert services.keys() == [f"{ns}/db1"]

        kc.create(api, Pod, pod("p-a", "node-a"), ns)
        kc.create(api, Pod, pod("p-b", "node-b"), ns)
        kc.create(api, Pod, pod("p-a2", "node-a"), ns)
        prec.wait_for(2)
        time.sleep(0.5)  # p-b must not arrive
        assert prec.names() == [("add", "p-a"), ("add", "p-a2")]
    finally:
        factory.stop()


def test_malformed_object_in_etcd_is_skipped(api, ns, cluster, caplog):
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": ns, "uid": "u-bad"},
           "spec": {"ports": [{"port": 99999}]}}
    cluster.put_raw("services/specs", ns, "bad", bad)
    kc.create(api, Service, svc("good"), ns)
    rec = Recorder()
    inf = rec.informer(api, namespace=ns).start()
    try:
        with caplog.at_level(logging.WARNING, logger="knet.kube"):
            assert inf.wait_synced(15)
            assert inf.keys() == [f"{ns}/good"] and rec.names() == [("add", "good")]
            assert f"skipping malformed Service {ns}/bad: spec.ports.0.port" in caplog.text

            # Through the watch: a new bad object is skipped, the stream goes on.
            cluster.put_raw("services/specs", ns, "bad2", {**bad, "metadata": {"name": "bad2", "namespace": ns}})
            kc.create(api, Service, svc("after"), ns)
            rec.wait_for(2)
            assert rec.names() == [("add", "good"), ("add", "after")]
            assert f"skipping malformed Service {ns}/bad2" in caplog.text
            # A good object made malformed behind the server's back leaves the cache (on_delete).
            good = kc.get(api, Service, "good", ns)
            good["spec"]["ports"][0]["protocol"] = "ICMP"
            cluster.put_raw("services/specs", ns, "good", good)
            rec.wait_for(3)
            assert rec.names()[2] == ("delete", "good")
            assert inf.keys() == [f"{ns}/after"]
    finally:
        inf.stop()


def test_watch_resumes_after_apiserver_restart(api, ns, cluster, caplog):
    kc.create(api, Service, svc("before"), ns)
    rec = Recorder()
    inf = rec.informer(api, namespace=ns, backoff=Backoff(initial=0.2, maximum=1.0)).start()
    try:
        with caplog.at_level(logging.INFO, logger="knet.kube.informer"):
            assert inf.wait_synced(15)
            cluster.restart_apiserver()
            kc.create(api, Service, svc("after-restart"), ns)
            rec.wait_for(2, timeout=30)
            assert rec.names() == [("add", "before"), ("add", "after-restart")]
            assert "retrying" in caplog.text
            if cluster.flavour == "lab":  # it resumed from its resourceVersion: one list, no relist
                assert "relisted" not in caplog.text
            # kube-apiserver's watch cache starts at etcd's revision of its own start: an older
            # resourceVersion is 410 Gone there, and the informer relists (no event: nothing changed).
    finally:
        inf.stop()


def test_informer_resumes_within_seconds_of_the_apiserver_coming_back(api, ns, cluster, caplog):
    """Issue 17: after an outage long enough for the reconnect backoff to have grown, a change
    made once the API server is back reaches the informer within seconds. The default backoff,
    with its jitter fixed at the top so the old behaviour is known: it waited 0.5, 1, 2, 4, 8, 16 s
    between attempts, so after six failed attempts it came back 16 s after the last one (minus the
    server's start-up) however soon the server returned."""
    rec = Recorder()
    inf = rec.informer(api, namespace=ns, backoff=Backoff(rng=lambda: 1.0)).start()

    def failures() -> int:
        return sum(1 for r in caplog.records if r.name == "knet.kube.informer" and "retrying in" in r.getMessage()
                   and inf.name in r.getMessage())

    try:
        with caplog.at_level(logging.INFO, logger="knet.kube.informer"):
            assert inf.wait_synced(15)
            cluster.stop_apiserver()
            deadline = time.monotonic() + 60
            while failures() < 6:
                assert time.monotonic() < deadline, "the informer did not notice the API server was gone"
                time.sleep(0.05)
            cluster.start_apiserver()
            back = time.monotonic()
            kc.create(api, Service, svc("after-outage"), ns)
            rec.wait_for(1, timeout=40)
            took = time.monotonic() - back
            assert rec.names() == [("add", "after-outage")]
            assert took < 4.0, f"the change reached the informer {took:.1f}s after the API server was back"
    finally:
        inf.stop()


def test_410_after_compaction_relists_with_a_synthesized_diff(api, ns, cluster, caplog):
    for name in ("keep", "change", "remove"):
        kc.create(api, Service, svc(name), ns)
    rec = Recorder()
    inf = rec.informer(api, namespace=ns).start()
    try:
        with caplog.at_level(logging.INFO, logger="knet.kube.informer"):
            assert inf.wait_synced(15)
            stale_rv = inf.resource_version
            cluster.stop_apiserver()
            # While the server is away the objects change behind its back (straight in etcd, as
            # another API server of the cluster would write them) and etcd is compacted: the
            # informer comes back with a resourceVersion that is gone.
            cluster.delete_raw("services/specs", ns, "remove")
            changed = cluster.get_raw("services/specs", ns, "change")
            changed["spec"]["selector"] = {"app": "changed"}
            cluster.put_raw("services/specs", ns, "change", changed)
            new = svc("new")
            new["metadata"].update(namespace=ns, uid="uid-new-" + ns)
            new["spec"]["clusterIP"] = "None"
            cluster.put_raw("services/specs", ns, "new", new)
            assert cluster.compact() > int(stale_rv)
            cluster.start_apiserver()
            rec.wait_for(6, timeout=30)
            assert rec.names(3) == [("delete", "remove"), ("update", "change"), ("add", "new")]
            assert rec.events[4][3].spec.selector == {"app": "changed"}
            assert sorted(inf.keys()) == [f"{ns}/change", f"{ns}/keep", f"{ns}/new"]
            assert "expired, relisting" in caplog.text or "410 Gone" in caplog.text
            # And the watch works again afterwards.
            kc.create(api, Service, svc("later"), ns)
            rec.wait_for(7)
            assert rec.names(6) == [("add", "later")]
    finally:
        inf.stop()


def test_client_helpers_and_status_patch(api, ns):
    created = kc.create(api, Pod, pod("web", "node-a"), ns)
    assert created["metadata"]["uid"]
    kc.patch_status(api, Pod, "web", {"phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
                                      "conditions": [{"type": "Ready", "status": "True"}]}, ns)
    got = parse(Pod, kc.get(api, Pod, "web", ns))
    assert got.is_ready and got.ips == ["10.244.1.7"] and got.status.phase == "Running"
    stale = dict(created)
    stale["metadata"] = {**created["metadata"], "labels": {"x": "y"}}
    with pytest.raises(ApiException) as err:
        kc.replace(api, Pod, "web", stale, ns)  # the old resourceVersion: a conflict
    assert err.value.status == 409
    items = kc.list_objects(api, Pod, ns, field_selector="metadata.name=web")["items"]
    assert [i["metadata"]["name"] for i in items] == ["web"]
    assert kc.delete(api, Pod, "web", ns, grace_period_seconds=0) is not None  # bound: no agent here
    assert kc.get(api, Pod, "web", ns) is None and kc.delete(api, Pod, "web", ns) is None


def test_paged_list_and_rewatch_after_server_timeout(api, ns, cluster, caplog):
    for i in range(5):
        kc.create(api, Service, svc(f"s{i}"), ns)
    rec = Recorder()
    # page_size=2: three pages through `continue`; watch_timeout=1: the server ends every watch
    # after ~1 s and the informer re-watches from its resourceVersion without relisting.
    inf = rec.informer(api, namespace=ns, page_size=2, watch_timeout=1).start()
    try:
        with caplog.at_level(logging.INFO, logger="knet.kube.informer"):
            assert inf.wait_synced(15)
            assert sorted(inf.keys()) == sorted(f"{ns}/s{i}" for i in range(5))
            for i in range(3):
                time.sleep(1.2)
                kc.create(api, Service, svc(f"late{i}"), ns)
            rec.wait_for(8)
            assert rec.names(5) == [("add", "late0"), ("add", "late1"), ("add", "late2")]
            assert "relisted" not in caplog.text and "retrying" not in caplog.text
        ours = [uri for uri in cluster.requests() if uri.startswith(f"/api/v1/namespaces/{ns}/services?")]
        lists = [line for line in ours if "limit=2" in line]
        assert len(lists) == 3 and sum("continue=" in line for line in lists) == 2
        assert sum("watch=true" in line for line in ours) >= 3
    finally:
        inf.stop()
