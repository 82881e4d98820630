"""knet.kube.selectors: the semantics table of label selectors, map selectors, string and field
selectors."""

from __future__ import annotations

import pytest

from knet.kube.models import LabelSelector
from knet.kube.selectors import (
    Selector,
    field_selector_matches,
    label_selector_matches,
    map_selector_matches,
    parse_field_selector,
    to_query,
)

WEB = {"app": "web", "tier": "frontend", "env": "prod"}
DB = {"app": "db", "tier": "backend"}
NONE: dict[str, str] = {}

# (selector as JSON, labels, expected)
LABEL_SELECTOR_TABLE = [
    ({}, WEB, True),  # empty selector: everything
    ({}, NONE, True),
    ({"matchLabels": {}, "matchExpressions": []}, DB, True),
    ({"matchLabels": {"app": "web"}}, WEB, True),
    ({"matchLabels": {"app": "web"}}, DB, False),
    ({"matchLabels": {"app": "web"}}, NONE, False),
    ({"matchLabels": {"app": "web", "tier": "frontend"}}, WEB, True),
    ({"matchLabels": {"app": "web", "tier": "backend"}}, WEB, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}, WEB, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}, DB, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["cache"]}]}, WEB, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}, NONE, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, WEB, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, DB, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, NONE, True),  # absent
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, WEB, True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, DB, False),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, WEB, False),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, DB, True),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, NONE, True),
    # matchLabels AND matchExpressions, and expressions ANDed with each other
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
     WEB, True),
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]},
     WEB, False),
    ({"matchLabels": {"app": "db"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
     WEB, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}, {"key": "env", "operator": "DoesNotExist"}]},
     DB, True),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}, {"key": "env", "operator": "DoesNotExist"}]},
     WEB, False),
]


@pytest.mark.parametrize("selector,labels,expected", LABEL_SELECTOR_TABLE)
def test_label_selector_table(selector, labels, expected):
    model = LabelSelector.model_validate(selector)
    assert label_selector_matches(model, labels) is expected
    assert label_selector_matches(selector, labels) is expected  # a plain dict works too
    assert model.matches(labels) is expected
    # The string form selects the same (when it has one: everything is "").
    assert Selector.parse(to_query(model)).matches(labels) is expected


def test_none_label_selector_matches_nothing():
    assert label_selector_matches(None, WEB) is False
    assert label_selector_matches(None, NONE) is False
    assert Selector.nothing().matches({}) is False and Selector.everything().matches({}) is True


def test_labels_none_is_no_labels():
    assert label_selector_matches({}, None) is True
    assert label_selector_matches({"matchLabels": {"a": "b"}}, None) is False


@pytest.mark.parametrize("selector,labels,expected", [
    ({"app": "web"}, WEB, True),
    ({"app": "web", "env": "prod"}, WEB, True),
    ({"app": "web", "env": "dev"}, WEB, False),
    ({"app": "web"}, DB, False),
    ({}, WEB, False),  # a Service without a selector selects no pods
    (None, WEB, False),
    ({}, NONE, False),
])
def test_map_selector(selector, labels, expected):
    assert map_selector_matches(selector, labels) is expected


@pytest.mark.parametrize("text,labels,expected", [
    ("", WEB, True),
    ("app=web", WEB, True),
    ("app==web", WEB, True),
    ("app=web,tier=backend", WEB, False),
    ("app!=web", WEB, False),
    ("app!=web", DB, True),
    ("env!=prod", DB, True),  # absent label satisfies !=
    ("app in (web, db)", DB, True),
    ("app in (web,db),tier notin (backend)", WEB, True),
    ("app in (web,db),tier notin (backend)", DB, False),
    ("env", WEB, True),
    ("!env", WEB, False),
    ("!env", DB, True),
    (" app = web , env ", WEB, True),
    ("replicas>2", {"replicas": "3"}, True),
    ("replicas<2", {"replicas": "3"}, False),
    ("replicas>2", {"replicas": "x"}, False),
    ("app.kubernetes.io/name=proxy", {"app.kubernetes.io/name": "proxy"}, True),
    ("a=", {"a": ""}, True),
])
def test_selector_string(text, labels, expected):
    assert Selector.parse(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["app in (web", "app in web)", "=web", "app=we b", "app in (a b)", "a>b", "a b"])
def test_selector_string_errors(text):
    with pytest.raises(ValueError):
        Selector.parse(text)


def test_to_query():
    assert to_query(None) is None
    assert to_query("") is None
    assert to_query("a=b") == "a=b"
    assert to_query({"b": "2", "a": "1"}) == "a=1,b=2"
    assert to_query(LabelSelector()) is None
    sel = LabelSelector.model_validate({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "env", "operator": "NotIn", "values": ["prod", "dev"]},
        {"key": "x", "operator": "Exists"}, {"key": "y", "operator": "DoesNotExist"}]})
    assert to_query(sel) == "app=web,env notin (dev,prod),x,!y"


POD = {"metadata": {"name": "web-0", "namespace": "default"},
       "spec": {"nodeName": "node1", "hostNetwork": True}, "status": {"phase": "Running"}}


@pytest.mark.parametrize("text,expected", [
    ("", True),
    ("metadata.name=web-0", True),
    ("metadata.name==web-0", True),
    ("metadata.name=web-1", False),
    ("spec.nodeName=node1,metadata.namespace=default", True),
    ("spec.nodeName!=node1", False),
    ("spec.nodeName!=node2", True),
    ("status.phase!=Succeeded,status.phase!=Failed", True),
    ("spec.hostNetwork=true", True),
    ("spec.schedulerName=", True),  # absent compares as ""
])
def test_field_selector(text, expected):
    assert field_selector_matches(parse_field_selector(text), POD) is expected


def test_field_selector_unscheduled_pods():
    reqs = parse_field_selector("spec.nodeName=")
    assert field_selector_matches(reqs, {"spec": {}})
    assert not field_selector_matches(reqs, POD)
    with pytest.raises(ValueError):
        parse_field_selector("spec.nodeName")
