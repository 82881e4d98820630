"""The API server's `?labelSelector=` / `?fieldSelector=`: parsed by knet.kube.selectors (whose own
tests cover the grammar and matching), answered 400 BadRequest when they do not parse."""

from __future__ import annotations

import pytest

from lab.apiserver.errors import ApiError
from lab.apiserver.query import Query
from lab.apiserver.resources import by_kind

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
