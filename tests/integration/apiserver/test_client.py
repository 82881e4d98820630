"""knet-apiserver through the official `kubernetes` client: CRUD, selectors, watch, conflicts,
patches, subresources, admission and allocation, cascades, mirroring."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.integration.apiserver.conftest import OTHER_TOKEN, stored_keys

pytestmark = pytest.mark.integration


def pod(name: str, labels: dict | None = None, node: str | None = None, **spec) -> dict:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": [{"containerPort": 80}]}], **spec}}
    if node:
        body["spec"]["nodeName"] = node
    return body


def svc(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def raw(server, path: str, method: str = "GET", token: str | None = None, body: bytes | None = None,
        ctype: str = "application/json") -> tuple[int, dict | str]:
    ctx = ssl.create_default_context(cafile=server.ca)
    req = urllib.request.Request(server.url + path, method=method, data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            code, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode()
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text


def error(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_discovery_health_and_auth(server, api):
    assert raw(server, "/healthz") == (200, "ok")
    code, version = raw(server, "/version")
    assert code == 200 and version["gitVersion"].startswith({"lab": "v1.27", "real": "v1.37"}[server.flavour])
    # Everything else needs a known bearer token: a wrong one is 401; none is system:anonymous
    # (anonymous requests are on with RBAC, as in kube-apiserver), who may not list: 403.
    code, status = raw(server, "/api/v1/namespaces", token="wrong")
    assert code == 401 and status["kind"] == "Status" and status["reason"] == "Unauthorized"
    code, status = raw(server, "/api/v1/namespaces")
    assert (code, status["reason"]) == (403, "Forbidden")
    assert status["message"] == ('namespaces is forbidden: User "system:anonymous" cannot list resource '
                                 '"namespaces" in API group "" at the cluster scope')
    assert raw(server, "/api/v1/namespaces", token=OTHER_TOKEN)[0] == 200
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "discovery.k8s.io", "networking.k8s.io"} <= set(groups)
    core = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert core["services"].short_names == ["svc"] and core["nodes"].namespaced is False
    assert "pods/status" in core and "replicationcontrollers/scale" in core
    apps = {r.name: r for r in client.AppsV1Api(api).get_api_resources().resources}
    assert (apps["deployments/scale"].group, apps["deployments/scale"].kind) == ("autoscaling", "Scale")
    namespaces = {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
    assert {"default", "kube-system"} <= namespaces
    assert client.CoreV1Api(api).read_namespaced_service("kubernetes", "default").spec.cluster_ip == "10.96.0.1"


def test_errors_unknown_resource_bad_json_and_mismatch(server, ns):
    code, status = raw(server, f"/api/v1/namespaces/{ns}/foos", token=OTHER_TOKEN)
    assert code == 404 and status["reason"] == "NotFound"
    assert raw(server, "/apis/nope.io/v1", token=OTHER_TOKEN)[0] == 404
    code, status = raw(server, f"/api/v1/namespaces/{ns}/pods", "POST", OTHER_TOKEN, b"{not json")
    assert code == 400 and status["reason"] == "BadRequest"
    body = json.dumps(pod("x") | {"metadata": {"name": "x", "namespace": "other"}}).encode()
    assert raw(server, f"/api/v1/namespaces/{ns}/pods", "POST", OTHER_TOKEN, body)[0] == 400
    code, status = raw(server, f"/api/v1/namespaces/{ns}/pods/x", "PUT", OTHER_TOKEN, json.dumps(pod("x")).encode())
    assert code == 404
    code, status = raw(server, "/api/v1/namespaces/nope/pods", "POST", OTHER_TOKEN, json.dumps(pod("x")).encode())
    assert code == 404 and status["details"]["kind"] == "namespaces"


def test_create_get_list_selectors(api, ns):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, pod("a", {"app": "web", "tier": "fe"}, node="n1"))
    core.create_namespaced_pod(ns, pod("b", {"app": "web"}, node="n2"))
    core.create_namespaced_pod(ns, pod("c", {"app": "db"}))
    made = core.create_namespaced_pod(ns, {**pod(""), "metadata": {"generateName": "gen-"}})
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == 9
    a = core.read_namespaced_pod("a", ns)
    assert a.metadata.uid and a.metadata.creation_timestamp and int(a.metadata.resource_version) > 0
    assert a.status.phase == "Pending" and a.spec.restart_policy == "Always"
    assert core.read_namespaced_pod("c", ns).spec.node_name is None  # unscheduled until bound

    def names(**kw) -> list[str]:
        return sorted(p.metadata.name for p in core.list_namespaced_pod(ns, **kw).items)

    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app==web,tier") == ["a"]
    assert names(label_selector="app!=web") == ["c", made.metadata.name]
    assert names(label_selector="app in (db, web),!tier") == ["b", "c"]
    assert names(label_selector="app notin (web)") == ["c", made.metadata.name]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="spec.nodeName=n1") == ["a"]
    assert names(field_selector="spec.nodeName=", label_selector="app") == ["c"]
    with pytest.raises(ApiException) as e:
        core.list_namespaced_pod(ns, field_selector="spec.bogus=1")
    assert e.value.status == 400
    with pytest.raises(ApiException) as e:
        core.list_namespaced_pod(ns, label_selector="a in b")
    assert e.value.status == 400
    listed = core.list_pod_for_all_namespaces(label_selector="app=web")
    assert {p.metadata.namespace for p in listed.items} == {ns} and int(listed.metadata.resource_version) > 0
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod(ns, pod("a"))
    assert e.value.status == 409 and error(e.value)["reason"] == "AlreadyExists"


def test_pagination(api, ns, server):
    core = client.CoreV1Api(api)
    for i in range(7):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm{i}"}, "data": {"i": str(i)}})
    seen, token, pages = [], None, 0
    # (kube-controller-manager also puts kube-root-ca.crt in every namespace: seen, then ignored)
    while True:
        page = core.list_namespaced_config_map(ns, limit=3, _continue=token)
        seen += [c.metadata.name for c in page.items]
        pages += 1
        token = page.metadata._continue
        if not token:
            break
    assert [n for n in seen if n.startswith("cm")] == [f"cm{i}" for i in range(7)]
    assert pages == 3


def test_update_conflict_and_status_subresource(api, ns, server):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, pod("p"))
    p = core.read_namespaced_pod("p", ns)
    p.metadata.labels = {"v": "1"}
    updated = core.replace_namespaced_pod("p", ns, p)
    assert int(updated.metadata.resource_version) > int(p.metadata.resource_version)
    p.metadata.labels = {"v": "2"}  # p still carries the old resourceVersion
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_pod("p", ns, p)
    assert e.value.status == 409 and error(e.value)["reason"] == "Conflict"
    # The main resource ignores status; the status subresource changes only status.
    cur = core.read_namespaced_pod("p", ns)
    cur.status.phase = "Running"
    assert core.replace_namespaced_pod("p", ns, cur).status.phase == "Pending"
    cur = core.read_namespaced_pod("p", ns)
    cur.status.phase, cur.status.pod_ip, cur.metadata.labels = "Running", "10.244.1.5", {"ignored": "yes"}
    after = core.replace_namespaced_pod_status("p", ns, cur)
    assert after.status.phase == "Running" and after.status.pod_ip == "10.244.1.5"
    # The lab keeps metadata on a status write; kube-apiserver's pod status strategy resets only
    # the spec, so labels sent there stick.
    assert after.metadata.labels == ({"v": "1"} if server.flavour == "lab" else {"ignored": "yes"})
    patched = core.patch_namespaced_pod_status("p", ns, {"status": {"conditions": [{"type": "Ready",
                                                                                  "status": "True"}]}})
    assert patched.status.phase == "Running" and patched.status.conditions[0].type == "Ready"
    # Binding (what a scheduler does) sets nodeName once.
    core.create_namespaced_pod(ns, pod("q"))
    core.create_namespaced_binding(ns, {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "q"},
                                        "target": {"apiVersion": "v1", "kind": "Node", "name": "node1"}},
                                   _preload_content=False)
    assert core.read_namespaced_pod("q", ns).spec.node_name == "node1"
    with pytest.raises(ApiException) as e:  # already bound
        core.create_namespaced_pod_binding("q", ns, {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "q"},
                                                     "target": {"kind": "Node", "name": "node2"}})
    assert e.value.status == 409


def test_patches(api, ns, server):
    apps = client.AppsV1Api(api)
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                    "template": {"metadata": {"labels": {"app": "d"}},
                                 "spec": {"containers": [{"name": "one", "image": "i1", "env": [{"name": "X",
                                                                                                 "value": "1"}]},
                                                         {"name": "two", "image": "i2"}]}}}}
    created = apps.create_namespaced_deployment(ns, dep)
    assert created.metadata.generation == 1 and created.spec.strategy.type == "RollingUpdate"
    # strategic merge (the client's default for dicts): containers merged by name, env by name
    smp = {"spec": {"template": {"spec": {"containers": [{"name": "two", "image": "i2b",
                                                          "env": [{"name": "Y", "value": "2"}]}]}}}}
    out = apps.patch_namespaced_deployment("d", ns, smp)
    cs = {c.name: c for c in out.spec.template.spec.containers}
    assert set(cs) == {"one", "two"} and cs["two"].image == "i2b" and cs["one"].env[0].name == "X"
    assert out.metadata.generation == 2
    # $patch: delete of one list element
    out = apps.patch_namespaced_deployment("d", ns, {"spec": {"template": {"spec": {"containers": [
        {"name": "one", "$patch": "delete"}]}}}})
    assert [c.name for c in out.spec.template.spec.containers] == ["two"]
    # JSON merge patch replaces lists, null removes keys
    code, _ = raw(server, f"/apis/apps/v1/namespaces/{ns}/deployments/d", "PATCH", OTHER_TOKEN,
                  json.dumps({"metadata": {"labels": {"a": None, "b": "2"}}}).encode(), "application/merge-patch+json")
    assert code == 200
    assert apps.read_namespaced_deployment("d", ns).metadata.labels == {"b": "2"}
    # JSON patch, including a failed test op (422, nothing changed)
    out = apps.patch_namespaced_deployment("d", ns, [{"op": "replace", "path": "/spec/replicas", "value": 4}])
    assert out.spec.replicas == 4
    with pytest.raises(ApiException) as e:
        apps.patch_namespaced_deployment("d", ns, [{"op": "test", "path": "/spec/replicas", "value": 9},
                                                   {"op": "replace", "path": "/spec/replicas", "value": 5}])
    assert e.value.status == 422
    # scale subresource
    scale = apps.read_namespaced_deployment_scale("d", ns)
    assert scale.spec.replicas == 4 and scale.status.selector == "app=d"
    apps.patch_namespaced_deployment_scale("d", ns, {"spec": {"replicas": 2}})
    assert apps.read_namespaced_deployment("d", ns).spec.replicas == 2
    # a patch that makes the object invalid is a 422
    with pytest.raises(ApiException) as e:
        apps.patch_namespaced_deployment("d", ns, {"spec": {"replicas": -1}})
    assert e.value.status == 422 and error(e.value)["details"]["causes"][0]["field"] == "spec.replicas"


def _collect(api, ns: str, rv: str | None, out: list, stop: threading.Event, **kw) -> None:
    w = watch.Watch()
    for ev in w.stream(client.CoreV1Api(api).list_namespaced_config_map, ns, resource_version=rv,
                       timeout_seconds=10, **kw):
        out.append((ev["type"], ev["object"].metadata.name, ev["object"].metadata.resource_version))
        if stop.is_set():
            w.stop()


def _wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_watch_events_resume_and_selectors(api, ns):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "pre"}})
    start_rv = core.list_namespaced_config_map(ns).metadata.resource_version
    events: list = []
    selected: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=_collect, args=(api, ns, start_rv, events, stop), daemon=True),
               threading.Thread(target=_collect, args=(api, ns, start_rv, selected, stop),
                                kwargs={"label_selector": "sel=yes"}, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "w1"}, "data": {"a": "1"}})
    core.patch_namespaced_config_map("w1", ns, {"data": {"a": "2"}})
    core.patch_namespaced_config_map("w1", ns, {"metadata": {"labels": {"sel": "yes"}}})
    core.patch_namespaced_config_map("w1", ns, {"metadata": {"labels": {"sel": "no"}}})
    core.delete_namespaced_config_map("w1", ns)
    _wait_for(lambda: len(events) >= 5 and len(selected) >= 2)
    stop.set()
    core.create_namespaced_config_map(ns, {"metadata": {"name": "poke"}})  # lets the watchers see stop
    assert [e[:2] for e in events[:5]] == [("ADDED", "w1"), ("MODIFIED", "w1"), ("MODIFIED", "w1"),
                                           ("MODIFIED", "w1"), ("DELETED", "w1")]
    # a selector watch sees the object enter (ADDED) and leave (DELETED) the selection
    assert [e[:2] for e in selected[:2]] == [("ADDED", "w1"), ("DELETED", "w1")]
    # resuming from the resourceVersion of the second event replays only what came after it
    replay: list = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=events[1][2], timeout_seconds=5):
        replay.append((ev["type"], ev["object"].metadata.name))
        if len(replay) == 3:
            w.stop()
    assert [e[:2] for e in replay[:3]] == [("MODIFIED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]
    # no resourceVersion: the current state first, as ADDED
    first = next(iter(watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=2)))
    assert first["type"] == "ADDED"


def test_watch_and_list_after_compaction_are_gone(api, ns, etcd, lab_only):
    """(kube-apiserver serves watches and exact lists from its watch cache, which keeps events
    from before an etcd compaction: it answers these instead of 410.)"""
    core = client.CoreV1Api(api)
    old_rv = core.create_namespaced_config_map(ns, {"metadata": {"name": "c1"}}).metadata.resource_version
    core.patch_namespaced_config_map("c1", ns, {"data": {"x": "y"}})
    rev = core.create_namespaced_config_map(ns, {"metadata": {"name": "c2"}}).metadata.resource_version
    assert etcd.etcdctl("compact", rev).returncode == 0
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=old_rv,
                                      timeout_seconds=5):
            pass
    assert e.value.status == 410
    with pytest.raises(ApiException) as e:
        core.list_namespaced_config_map(ns, resource_version=old_rv, resource_version_match="Exact")
    assert e.value.status == 410 and error(e.value)["reason"] == "Expired"
    # a watch from the compaction point itself still works
    w = watch.Watch()
    got = []
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rev, timeout_seconds=1):
        got.append(ev)
    assert got == []


def test_delete_namespace_and_owner_cascade(api, ns):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    rs = apps.create_namespaced_replica_set(ns, {
        "metadata": {"name": "rs"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                                             "template": {"metadata": {"labels": {"a": "b"}},
                                                          "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    owned = pod("owned", {"a": "b"})
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                             "uid": rs.metadata.uid, "controller": True}]
    core.create_namespaced_pod(ns, owned)
    core.create_namespaced_pod(ns, pod("free"))
    apps.delete_namespaced_replica_set("rs", ns)
    _wait_for(lambda: [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["free"])
    # namespace deletion: Terminating, its content goes, then it goes
    core.create_namespaced_service(ns, svc("s"))
    gone = core.delete_namespace(ns)
    phase = gone["status"]["phase"] if isinstance(gone, dict) else gone.status.phase
    assert phase == "Terminating"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "late"}})
    assert e.value.status in (403, 404)
    _wait_for(lambda: ns not in {n.metadata.name for n in core.list_namespace().items})
    assert core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}").items == []
    with pytest.raises(ApiException) as e:
        core.delete_namespace("default")
    assert e.value.status == 403


def test_graceful_pod_deletion(api, ns):
    """A pod bound to a node is marked, not removed (its node's agent finishes the deletion); the
    grace comes from DeleteOptions or the pod; it can be shortened, not lengthened; grace 0 and
    unscheduled pods go at once. (No agent runs here: the marked pod stays.)"""
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, pod("bound", node="node9", terminationGracePeriodSeconds=20))
    core.create_namespaced_pod(ns, pod("loose"))
    t0 = time.time()
    marked = core.delete_namespaced_pod("bound", ns)
    assert marked.metadata.deletion_grace_period_seconds == 20
    left = marked.metadata.deletion_timestamp.timestamp() - t0
    assert 18 <= left <= 22, f"deletionTimestamp {left:.1f}s ahead (now + grace)"
    assert core.read_namespaced_pod("bound", ns).metadata.deletion_timestamp is not None
    longer = core.delete_namespaced_pod("bound", ns, body=client.V1DeleteOptions(grace_period_seconds=60))
    assert longer.metadata.deletion_grace_period_seconds == 20, "a later delete never lengthens the grace"
    shorter = core.delete_namespaced_pod("bound", ns, grace_period_seconds=5)
    assert shorter.metadata.deletion_grace_period_seconds == 5
    assert shorter.metadata.deletion_timestamp < marked.metadata.deletion_timestamp
    with pytest.raises(ApiException) as e:  # the agent's final delete names the incarnation
        core.delete_namespaced_pod("bound", ns, body=client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid="not-this-one")))
    assert e.value.status == 409
    core.delete_namespaced_pod("bound", ns, body=client.V1DeleteOptions(grace_period_seconds=0))
    core.delete_namespaced_pod("loose", ns)
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == []


def test_service_defaults_and_allocation(api, ns, server, etcd):
    core = client.CoreV1Api(api)
    s = core.create_namespaced_service(ns, svc("plain", selector={"app": "x"}))
    assert s.spec.session_affinity == "None" and s.spec.type == "ClusterIP"
    assert s.spec.ports[0].protocol == "TCP" and s.spec.ports[0].target_port == 80
    assert s.spec.cluster_ip.startswith("10.") and s.spec.cluster_ips == [s.spec.cluster_ip]
    fixed = core.create_namespaced_service(ns, svc("fixed", clusterIP="10.100.125.105"))
    assert fixed.spec.cluster_ip == "10.100.125.105"
    headless = core.create_namespaced_service(ns, svc("none", clusterIP="None"))
    assert headless.spec.cluster_ip == "None"
    np = core.create_namespaced_service(ns, svc("np", type="NodePort", ports=[{"port": 80, "name": "a"},
                                                                               {"port": 81, "name": "b",
                                                                                "nodePort": 30001}]))
    ports = sorted(p.node_port for p in np.spec.ports)
    assert 30000 <= ports[0] <= 32767 and 30001 in ports and ports[0] != ports[1]
    before = stored_keys(etcd, server, ns)

    def rejected(body: dict, *fields: str) -> dict:
        """422 naming one of `fields`."""
        with pytest.raises(ApiException) as e:
            core.create_namespaced_service(ns, body)
        status = error(e.value)
        assert e.value.status == 422 and status["reason"] == "Invalid", status
        assert set(fields) & {c["field"] for c in status["details"]["causes"]}, status
        return status

    # kube-apiserver names spec.clusterIPs for an address it cannot allocate, the lab spec.clusterIP
    st = rejected(svc("dup", clusterIP="10.100.125.105"), "spec.clusterIP", "spec.clusterIPs")
    assert "already allocated" in st["message"]
    far = rejected(svc("far", clusterIP="10.200.0.1"), "spec.clusterIP", "spec.clusterIPs")["message"]
    assert ("valid range" if server.flavour == "lab" else "does not match the current range") in far
    rejected(svc("npdup", type="NodePort", ports=[{"port": 80, "nodePort": 30001}]), "spec.ports[0].nodePort")
    rejected(svc("nprange", type="NodePort", ports=[{"port": 80, "nodePort": 40000}]), "spec.ports[0].nodePort")
    rejected(svc("cipnp", ports=[{"port": 80, "nodePort": 30005}]), "spec.ports[0].nodePort")
    rejected({"metadata": {"name": "noports"}, "spec": {}}, "spec.ports")
    rejected(svc("badproto", ports=[{"port": 80, "protocol": "ICMP"}]), "spec.ports[0].protocol")
    assert stored_keys(etcd, server, ns) == before  # nothing written for rejected requests
    # the lab's server gives the cluster DNS service the tenth address; kube-apiserver does not
    # (kubeadm's manifest names it), so there it is just in the range
    dns = core.create_namespaced_service("kube-system", svc("kube-dns", ports=[{"port": 53, "protocol": "UDP"}]))
    if server.flavour == "lab":
        assert dns.spec.cluster_ip == "10.96.0.10"
    else:
        assert ipaddress.ip_address(dns.spec.cluster_ip) in ipaddress.ip_network("10.96.0.0/12")
    core.delete_namespaced_service("kube-dns", "kube-system")
    # updates keep the allocation; the IP is immutable; deletion releases it
    cur = core.read_namespaced_service("plain", ns)
    cur.metadata.labels = {"x": "y"}
    cur.spec.cluster_ip, cur.spec.cluster_ips = None, None
    assert core.replace_namespaced_service("plain", ns, cur).spec.cluster_ip == s.spec.cluster_ip
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_service("fixed", ns, {"spec": {"clusterIP": "10.100.0.7"}})
    assert e.value.status == 422
    core.delete_namespaced_service("fixed", ns)
    assert core.create_namespaced_service(ns, svc("again", clusterIP="10.100.125.105")).spec.cluster_ip
    # NodePort -> ClusterIP drops the node ports and releases them
    core.patch_namespaced_service("np", ns, {"spec": {"type": "ClusterIP"}})
    assert all(p.node_port is None for p in core.read_namespaced_service("np", ns).spec.ports)
    core.create_namespaced_service(ns, svc("np2", type="NodePort", ports=[{"port": 80, "nodePort": 30001}]))


def test_service_update_keeps_cluster_ip(api, ns):
    core = client.CoreV1Api(api)
    s = core.create_namespaced_service(ns, svc("keep", type="NodePort"))
    ip, node_port = s.spec.cluster_ip, s.spec.ports[0].node_port
    body = svc("keep", type="NodePort")  # a PUT of the original manifest (no clusterIP, no nodePort)
    body["metadata"]["resourceVersion"] = s.metadata.resource_version
    out = core.replace_namespaced_service("keep", ns, body)
    assert out.spec.cluster_ip == ip and out.spec.ports[0].node_port == node_port


def test_pod_and_workload_validation(api, ns, server, etcd):
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    before = stored_keys(etcd, server, ns)
    cases = [
        (core.create_namespaced_pod, {"metadata": {"name": "p"}, "spec": {"containers": []}}, "spec.containers"),
        (core.create_namespaced_pod, {"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "i", "ports": [{"containerPort": 70000}]}]}}, "spec.containers[0].ports[0]"
                                                                                 ".containerPort"),
        (core.create_namespaced_pod, {"metadata": {"name": "Bad_Name"}, "spec": {"containers": [
            {"name": "c", "image": "i"}]}}, "metadata.name"),
        (apps.create_namespaced_deployment, {"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "c"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
         "spec.template.metadata.labels"),
        (core.create_namespaced_endpoints, {"metadata": {"name": "e"}, "subsets": [
            {"addresses": [{"ip": "not-an-ip"}], "ports": [{"port": 80}]}]}, "subsets[0].addresses[0].ip"),
    ]
    for create, body, field in cases:
        with pytest.raises(ApiException) as e:
            create(ns, body)
        status = error(e.value)
        assert e.value.status == 422 and field in [c["field"] for c in status["details"]["causes"]], status
    assert stored_keys(etcd, server, ns) == before
    net = client.NetworkingV1Api(api)
    with pytest.raises(ApiException) as e:
        net.create_namespaced_network_policy(ns, {"metadata": {"name": "np"}, "spec": {"podSelector": {}, "ingress": [
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}})
    assert error(e.value)["details"]["causes"][0]["field"] == "spec.ingress[0].from[0].ipBlock.except[0]"
    ok = net.create_namespaced_network_policy(ns, {"metadata": {"name": "np"}, "spec": {
        "podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 5432}]}]}})
    assert ok.spec.policy_types == ["Ingress"] and ok.spec.ingress[0].ports[0].protocol == "TCP"


def test_endpoints_mirrored_into_endpointslices(api, ns, server):
    core, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    core.create_namespaced_service(ns, svc("custom-service", ports=[{"port": 80, "targetPort": 8080}]))
    core.create_namespaced_endpoints(ns, {"metadata": {"name": "custom-service"}, "subsets": [
        {"addresses": [{"ip": "192.168.33.100"}], "notReadyAddresses": [{"ip": "192.168.33.101"}],
         "ports": [{"port": 8080}]}]})
    sel = "kubernetes.io/service-name=custom-service"
    # (the lab mirrors as it stores; kube-controller-manager's mirroring controller a moment later)
    _wait_for(lambda: disc.list_namespaced_endpoint_slice(ns, label_selector=sel).items)
    slices = disc.list_namespaced_endpoint_slice(ns, label_selector=sel).items
    assert len(slices) == 1
    s = slices[0]
    assert s.metadata.labels["endpointslice.kubernetes.io/managed-by"] == "endpointslicemirroring-controller.k8s.io"
    assert s.address_type == "IPv4" and s.ports[0].port == 8080 and s.ports[0].protocol == "TCP"
    assert {(e.addresses[0], e.conditions.ready) for e in s.endpoints} == {("192.168.33.100", True),
                                                                          ("192.168.33.101", False)}
    core.patch_namespaced_endpoints("custom-service", ns, {"subsets": [{"addresses": [{"ip": "192.168.33.102"}],
                                                                        "ports": [{"port": 8080}]}]})
    _wait_for(lambda: [e.addresses[0] for e in disc.list_namespaced_endpoint_slice(
        ns, label_selector=sel).items[0].endpoints] == ["192.168.33.102"])
    core.delete_namespaced_endpoints("custom-service", ns)
    _wait_for(lambda: not disc.list_namespaced_endpoint_slice(ns, label_selector=sel).items)
    # a Service with a selector is not mirrored (the EndpointSlice controller owns its slices)
    core.create_namespaced_service(ns, svc("selected", selector={"app": "x"}))
    if server.flavour == "real":  # its Endpoints are kube-controller-manager's endpoints controller's
        _wait_for(lambda: core.list_namespaced_endpoints(ns, field_selector="metadata.name=selected").items)
    else:
        core.create_namespaced_endpoints(ns, {"metadata": {"name": "selected"}, "subsets": [
            {"addresses": [{"ip": "10.244.1.2"}], "ports": [{"port": 80}]}]})
    mirrored = "kubernetes.io/service-name=selected,endpointslice.kubernetes.io/managed-by=" \
               "endpointslicemirroring-controller.k8s.io"
    time.sleep(1)  # (a mirrored slice would be there by now; kube-controller-manager's own may be)
    assert not disc.list_namespaced_endpoint_slice(ns, label_selector=mirrored).items


def test_server_restart_keeps_state(api, ns, server, etcd, tmp_path):
    from knet_testing.apiserver_env import stop
    from tests.integration.apiserver.conftest import start_server
    client.CoreV1Api(api).create_namespaced_config_map(ns, {"metadata": {"name": "persist"}})
    second = start_server(etcd, str(tmp_path), server.prefix, flavour=server.flavour)
    try:
        from kubernetes import config
        other = config.new_client_from_config(config_file=second.kubeconfig)
        assert client.CoreV1Api(other).read_namespaced_config_map("persist", ns).metadata.name == "persist"
        other.close()
    finally:
        assert stop(second.proc) == 0


def test_watch_bookmarks_carry_filtered_progress(api, ns, server, lab_only):
    """A selective watch sees nothing of the changes it filters out, but its closing BOOKMARK
    moves the client's resourceVersion past them (so a later compaction does not strand it).
    (kube-apiserver sends bookmarks about once a minute, not when a 2 s watch ends.)"""
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    result: list = []

    def watch_raw() -> None:
        code, text = raw(server, f"/api/v1/namespaces/{ns}/configmaps?watch=1&allowWatchBookmarks=true"
                                 f"&labelSelector=pick%3Dme&timeoutSeconds=2&resourceVersion={rv}", token=OTHER_TOKEN)
        result.append((code, text))

    t = threading.Thread(target=watch_raw, daemon=True)
    t.start()
    time.sleep(0.3)
    last = core.create_namespaced_config_map(ns, {"metadata": {"name": "unpicked"}}).metadata.resource_version
    t.join(10)
    code, text = result[0]
    lines = [json.loads(line) for line in (text if isinstance(text, str) else json.dumps(text)).splitlines()]
    assert code == 200 and [e["type"] for e in lines] == ["BOOKMARK"]
    assert int(lines[0]["object"]["metadata"]["resourceVersion"]) >= int(last)
    assert lines[0]["object"]["kind"] == "ConfigMap"


def test_generation_only_on_the_kinds_kube_apiserver_keeps_it_for(api, ns):
    """metadata.generation: set (and bumped by a spec change) on pods, EndpointSlices,
    NetworkPolicies; absent on Services and Nodes although they have a spec (the lab's server
    gave every object with a spec one: found running the lab on kube-apiserver)."""
    core, disc, net = client.CoreV1Api(api), client.DiscoveryV1Api(api), client.NetworkingV1Api(api)
    pod = core.create_namespaced_pod(ns, {"metadata": {"name": "g"}, "spec": {"containers": [{"name": "c",
                                                                                               "image": "i"}]}})
    eps = disc.create_namespaced_endpoint_slice(ns, {"metadata": {"name": "g"}, "addressType": "IPv4",
                                                     "endpoints": [{"addresses": ["10.1.2.3"]}]})
    pol = net.create_namespaced_network_policy(ns, {"metadata": {"name": "g"}, "spec": {"podSelector": {}}})
    assert (pod.metadata.generation, eps.metadata.generation, pol.metadata.generation) == (1, 1, 1)
    eps = disc.patch_namespaced_endpoint_slice("g", ns, {"endpoints": [{"addresses": ["10.1.2.4"]}]})
    assert eps.metadata.generation == 2
    svc = core.create_namespaced_service(ns, {"metadata": {"name": "g"}, "spec": {"ports": [{"port": 80}]}})
    assert svc.metadata.generation is None
    node = core.create_node({"metadata": {"name": f"gen-{ns}"}, "spec": {"unschedulable": True}})
    try:
        assert node.metadata.generation is None
        assert core.patch_node(node.metadata.name, {"spec": {"unschedulable": False}}).metadata.generation is None
    finally:
        core.delete_node(node.metadata.name)
