"""Label and field selector strings (the apiserver's ?labelSelector= / ?fieldSelector=)."""

from __future__ import annotations

import pytest

from lab.apiserver import selectors as s


@pytest.mark.parametrize("text,labels,expected", [
    ("", {"a": "b"}, True),
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "db"}, False),
    ("app!=web", {}, True),  # != matches objects without the key, as in Kubernetes
    ("app!=web", {"app": "web"}, False),
    ("env in (prod, dev)", {"env": "dev"}, True),
    ("env in (prod)", {}, False),
    ("env notin (prod)", {}, True),
    ("env notin (prod)", {"env": "prod"}, False),
    ("tier", {"tier": ""}, True),
    ("!tier", {"tier": "x"}, False),
    ("!tier,app=web", {"app": "web"}, True),
    ("app.kubernetes.io/name=web, tier", {"app.kubernetes.io/name": "web", "tier": "fe"}, True),
    ("n>3", {"n": "4"}, True),
    ("n<3", {"n": "4"}, False),
    ("app=", {"app": ""}, True),
])
def test_label_selector_matching(text, labels, expected):
    assert s.matches(s.parse_labels(text), labels) is expected


@pytest.mark.parametrize("text", ["a=b,", "=b", "a b", "a in b", "!a=b", "a in ()", "a=b c", "Bad Key=1",
                                  "n>x", "a=in valid"])
def test_label_selector_errors(text):
    with pytest.raises(s.SelectorError):
        s.parse_labels(text)


def test_label_selector_objects_and_strings():
    sel = s.from_object({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                              {"key": "gone", "operator": "DoesNotExist"}]})
    assert s.matches(sel, {"app": "web", "env": "a"})
    assert not s.matches(sel, {"app": "web", "env": "a", "gone": "1"})
    assert s.to_string(sel) == "app=web,env in (a,b),!gone"
    assert s.parse_labels(s.to_string(sel)) == sel
    with pytest.raises(s.SelectorError):
        s.from_object({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})


def test_field_selectors():
    pod = {"metadata": {"name": "a", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {}}
    assert s.fields_match(s.parse_fields("metadata.name=a,spec.nodeName==n1"), pod)
    assert not s.fields_match(s.parse_fields("spec.nodeName!=n1"), pod)
    assert s.fields_match(s.parse_fields("status.phase="), pod)  # missing reads as ""
    assert s.fields_match(s.parse_fields("spec.nodeName!="), pod)
    assert s.parse_fields(r"metadata.name=a\,b") == (s.FieldRequirement("metadata.name", "a,b", True),)
    with pytest.raises(s.SelectorError):
        s.parse_fields("metadata.name")
    with pytest.raises(s.SelectorError):
        s.check_fields(s.parse_fields("spec.bogus=1"), {"metadata.name"}, "Pod")
