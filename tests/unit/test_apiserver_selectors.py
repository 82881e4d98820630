"""The API server's `?labelSelector=` / `?fieldSelector=`: parsed by knet.kube.selectors (whose own
tests cover the grammar and matching), answered 400 BadRequest when they do not parse."""

from __future__ import annotations

import random

import pytest

from lab.apiserver.errors import ApiError
from lab.apiserver.query import Query
from lab.apiserver.resources import by_kind
from lab.apiserver.storage import encode

PODS = by_kind("", "Pod")


def query(**params: str) -> Query:
    return Query(PODS, params)


def test_query_matches_labels_and_fields():
    pod = {"metadata": {"name": "a", "namespace": "default", "labels": {"app": "web", "tier": "fe"}},
           "spec": {"nodeName": "n1"}, "status": {}}
    assert query().matches(pod)
    assert query(labelSelector="app in (web, db),tier", fieldSelector="spec.nodeName=n1").matches(pod)
    assert not query(labelSelector="app!=web").matches(pod)
    assert not query(fieldSelector="metadata.namespace!=default").matches(pod)
    assert query(labelSelector="!gone", fieldSelector="status.phase=").matches(pod)
    assert not query(labelSelector="app").matches({"metadata": {"name": "b"}})
    assert not query().matches(None)


@pytest.mark.parametrize("params,message", [
    ({"labelSelector": "a in b"}, "unable to parse requirement: 'a in b'"),
    ({"labelSelector": "a=b,"}, "unable to parse requirement: found '', expected: identifier after ','"),
    ({"labelSelector": "Bad_=1"}, "unable to parse requirement: invalid label key 'Bad_'"),
    ({"fieldSelector": "metadata.name"},
     "unable to parse requirement: invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
    ({"fieldSelector": "spec.bogus=1"}, 'unable to parse requirement: "spec.bogus" is not a known field selector: '
                                        'only "Pod" fields '),
])
def test_bad_selectors_are_400(params, message):
    with pytest.raises(ApiError) as e:
        query(**params)
    assert e.value.code == 400 and e.value.reason == "BadRequest"
    assert e.value.message.startswith(message)


def test_raw_prefilter_never_drops_a_match():
    """A list read from etcd skips objects whose stored JSON lacks a hint, without decoding them:
    every object the query matches must contain every hint."""
    rnd = random.Random(11)
    values = ["web", "db", "x-1", "a.b", "30", "true", ""]
    selectors = ["app=web", "app in (web,db)", "app", "!app", "app!=db", "tier=x-1", "app=web,tier in (a.b)"]
    fields = ["", "spec.nodeName=n1", "spec.nodeName=", "status.phase=Running", "metadata.name=p1",
              "spec.restartPolicy=Always", "status.podIP=10.0.0.1"]
    for _ in range(3000):
        labels = {k: rnd.choice(values) for k in rnd.sample(["app", "tier", "zone"], rnd.randint(0, 3))}
        obj = {"metadata": {"name": rnd.choice(["p1", "p2"]), "namespace": "d", "labels": labels},
               "spec": {"nodeName": rnd.choice(["n1", "n2"])} if rnd.random() < 0.7 else {},
               "status": {"phase": rnd.choice(["Running", "Pending"]), "podIP": "10.0.0.1"}}
        raw = encode(obj).encode()
        q = query(labelSelector=rnd.choice(selectors), fieldSelector=rnd.choice(fields))
        if q.matches(obj):
            assert all(h in raw for h in q.raw_hints()), (q.raw_hints(), obj)
    assert query(labelSelector="app=web").raw_hints() == [b'"app"', b'"web"']
    rs = Query(by_kind("apps", "ReplicaSet"), {"fieldSelector": "status.replicas=3"})
    assert rs.raw_hints() == []  # numbers are not quoted in JSON


def test_indexable_terms():
    q = query(labelSelector="app in (a,b),tier!=x,zone", fieldSelector="spec.nodeName=n1,metadata.name!=p")
    assert q.indexable() == [("label:app", ("a", "b")), ("field:spec.nodeName", ("n1",))]
