"""knet.kube.selectors: the semantics table of label selectors, map selectors, string and field
selectors (the lab API server's `?labelSelector=` / `?fieldSelector=` included)."""

from __future__ import annotations

import pytest

from knet.kube.models import LabelSelector
from knet.kube.selectors import (
    FieldRequirement,
    Selector,
    SelectorError,
    check_field_selector,
    field_selector_matches,
    field_value,
    label_selector_matches,
    map_selector_matches,
    parse_field_selector,
    to_query,
    valid_label_key,
    valid_label_value,
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
    ("app!=web", NONE, True),  # != matches objects without the key, as in Kubernetes
    ("env in (prod)", NONE, False),
    ("env notin (prod)", NONE, True),
    ("tier", {"tier": ""}, True),
    ("!tier,app=web", {"app": "web"}, True),
    ("app.kubernetes.io/name=web, tier", {"app.kubernetes.io/name": "web", "tier": "fe"}, True),
    ("! tier", DB, False),
    ("a in (x,)", {"a": ""}, True),  # an empty value in a set is a value
    ("n>-3", {"n": "-2"}, True),
])
def test_selector_string(text, labels, expected):
    assert Selector.parse(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["app in (web", "app in web)", "=web", "app=we b", "app in (a b)", "a>b", "a b",
                                  "a=b,", "a in b", "!a=b", "a in ()", "a in ( )", "a=b c", "Bad Key=1", "n>x",
                                  "a=in valid", "a_=1", "Example.com/a", "a/b/c", "a=-b", "a=" + "x" * 64, "a,,b"])
def test_selector_string_errors(text):
    with pytest.raises(SelectorError):  # a ValueError; the API server answers it with 400
        Selector.parse(text)


@pytest.mark.parametrize("text,message", [
    ("a b", "unable to parse requirement: 'a b'"),
    ("a=b,", "found '', expected: identifier after ','"),
    ("Bad_=1", "invalid label key 'Bad_'"),
    ("a=-b", "invalid label value '-b'"),
    ("!a=b", "'!' must be followed by a bare key, not an operator: a"),
    ("a in ()", "for 'in', 'notin' operators, values set can't be empty: a"),
    ("n>x", "for 'gt', 'lt' operators, exactly one integer value is required: 'x'"),
])
def test_selector_string_error_messages(text, message):
    with pytest.raises(SelectorError) as e:
        Selector.parse(text)
    assert str(e.value) == message


@pytest.mark.parametrize("key,ok", [
    ("app", True), ("app.kubernetes.io/name", True), ("a_b.c-d", True), ("A", True), ("x" * 63, True),
    ("x" * 64, False), ("a_", False), ("-a", False), ("Example.com/a", False), ("a/b/c", False), ("", False),
    ("/a", False), ("a" * 254 + "/b", False), ("a" * 253 + "/b", True),
])
def test_valid_label_key(key, ok):
    assert valid_label_key(key) is ok


@pytest.mark.parametrize("value,ok", [
    ("", True), ("web", True), ("a-b_c.d", True), ("x" * 63, True), ("x" * 64, False), ("-a", False),
    ("a.", False), ("a b", False), ("a/b", False),
])
def test_valid_label_value(value, ok):
    assert valid_label_value(value) is ok


def test_selector_round_trip():
    sel = Selector.from_object({"matchLabels": {"app": "web"},
                                "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                                     {"key": "gone", "operator": "DoesNotExist"}]})
    assert sel.matches({"app": "web", "env": "a"})
    assert not sel.matches({"app": "web", "env": "a", "gone": "1"})
    assert str(sel) == "app=web,env in (a,b),!gone"
    assert Selector.parse(str(sel)).requirements == sel.requirements


def test_selector_from_object_is_the_unvalidated_json():
    # What the API server holds before (or beside) validation: null parts are empty, values compare
    # as strings, faults other than an unknown operator are left to validation.
    assert Selector.from_object({"matchLabels": None, "matchExpressions": None}).is_everything()
    assert Selector.from_object({"matchLabels": {"n": 1}}).matches({"n": "1"})
    assert not Selector.from_object({"matchExpressions": [{"key": "a", "operator": "In"}]}).matches({"a": "x"})
    assert str(Selector.from_object(None)) == "" and not Selector.from_object(None).matches({})
    with pytest.raises(SelectorError, match="'Bogus' is not a valid label selector operator"):
        Selector.from_object({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})


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
    ("spec.nodeName!=", True),
    ("metadata.name=web-0,", True),  # empty terms are skipped
    ("metadata.name= web-0", False),  # values are not trimmed (fields.ParseSelector)
])
def test_field_selector(text, expected):
    assert field_selector_matches(parse_field_selector(text), POD) is expected


def test_field_selector_unscheduled_pods():
    reqs = parse_field_selector("spec.nodeName=")
    assert field_selector_matches(reqs, {"spec": {}})
    assert not field_selector_matches(reqs, POD)
    with pytest.raises(ValueError):
        parse_field_selector("spec.nodeName")


def test_field_selector_escapes_and_parts():
    assert parse_field_selector(r"metadata.name=a\,b") == [FieldRequirement("metadata.name", "=", "a,b")]
    assert parse_field_selector(r" metadata.name = a\=b\\") == [FieldRequirement("metadata.name", "=", " a=b\\")]
    assert parse_field_selector("a!=b=c") == [FieldRequirement("a", "!=", "b=c")]
    assert field_selector_matches(parse_field_selector(r"metadata.name=a\,b"), {"metadata": {"name": "a,b"}})
    assert parse_field_selector(None) == [] and parse_field_selector(" , ") == []
    with pytest.raises(SelectorError, match="invalid field selector term '=x'"):
        parse_field_selector("=x")
    with pytest.raises(SelectorError, match="invalid selector: 'bare'; can't understand 'bare'"):
        parse_field_selector("bare")


def test_field_value():
    event = {"source": {"component": "kubelet"}, "involvedObject": {"kind": "Pod"}}
    assert field_value(event, "source") == "kubelet"  # Event.source: the selector means its component
    assert field_value(event, "involvedObject.kind") == "Pod"
    assert field_value(event, "involvedObject.kind.x") == ""
    assert field_value({"spec": {"unschedulable": False}}, "spec.unschedulable") == "false"
    assert field_value({"spec": {"replicas": 3}}, "spec.replicas") == "3"


def test_check_field_selector():
    allowed = {"metadata.name", "spec.nodeName"}
    check_field_selector(parse_field_selector("metadata.name=a,spec.nodeName!=b"), allowed, "Pod")
    with pytest.raises(SelectorError) as e:
        check_field_selector(parse_field_selector("spec.bogus=1"), allowed, "Pod")
    assert str(e.value) == ('"spec.bogus" is not a known field selector: only "Pod" fields '
                            'metadata.name, spec.nodeName are supported')
