"""Ingress -> routing table: hosts, paths (the spec's examples), classes, conflicts, backends."""

from __future__ import annotations

import pytest

from ingress.compiler import Options, Snapshot, compile_table, is_ours
from ingress.model import host_matches, normalize_path, prefix_matches, valid_host
from knet_testing.ingress import (
    SPEC_PATH_TABLE,
    backend,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
)


def table_of(*ingresses, services=None, slices=None, classes=(), secrets=(), **opts):
    """Every referenced service exists with one endpoint unless given explicitly."""
    names = set()
    for ing in ingresses:
        for r in ing.spec.rules:
            names.update(p.backend.service.name for p in (r.http.paths if r.http else []) if p.backend.service)
        if ing.spec.default_backend:
            names.add(ing.spec.default_backend.service.name)
    if services is None:
        services = [service(n) for n in sorted(names)]
    if slices is None:
        slices = [endpoint_slice(n, [f"10.244.1.{i + 2}"]) for i, n in enumerate(sorted(names))]
    snap = Snapshot.of(ingresses, classes, services, slices, secrets)
    return compile_table(snap, Options(**opts))


def served(table, host, p):
    return table.lookup(host, p).target.service


# --- the pure predicates -------------------------------------------------------------------------

@pytest.mark.parametrize(("rule_host", "host", "ok"), [
    ("foo.bar.com", "foo.bar.com", True),
    ("foo.bar.com", "bar.com", False),
    ("*.foo.com", "bar.foo.com", True),
    ("*.foo.com", "baz.bar.foo.com", False),   # one label only
    ("*.foo.com", "foo.com", False),           # the wildcard label cannot be empty
    ("*.foo.com", ".foo.com", False),
    ("", "anything.example", True),
])
def test_host_matches(rule_host, host, ok):
    assert host_matches(rule_host, host) is ok


def test_valid_host():
    assert valid_host("a.whale.hey") and valid_host("*.whale.hey")
    assert not valid_host("*") and not valid_host("a.*.hey") and not valid_host("foo_bar.com")


def test_prefix_is_element_wise():
    assert prefix_matches("/foo", "/foo") and prefix_matches("/foo", "/foo/") and prefix_matches("/foo", "/foo/bar")
    assert not prefix_matches("/foo", "/foobar")
    assert normalize_path("/foo/", "Prefix") == "/foo" and normalize_path("/foo/", "Exact") == "/foo/"
    assert normalize_path("//a//b/", "Prefix") == "/a/b" and normalize_path("/", "Prefix") == "/"


# --- the spec's examples table -------------------------------------------------------------------

@pytest.mark.parametrize(("paths", "request_path", "winner"), SPEC_PATH_TABLE)
def test_spec_examples(paths, request_path, winner):
    ing = ingress("t", rule(None, *[path(p, f"svc{i}", kind=k) for i, (k, p) in enumerate(paths)]),
                  default=backend("fallback"))
    got = served(table_of(ing), "example.com", request_path)
    assert got == ("default/fallback:80" if winner is None else f"default/svc{winner}:80")


def test_implementation_specific_is_prefix():
    ing = ingress("t", rule(None, path("/docs", "a", kind="ImplementationSpecific"),
                            path(None, "b", kind="ImplementationSpecific")))
    t = table_of(ing)
    assert served(t, "x", "/docs/v1") == "default/a:80"
    assert served(t, "x", "/docsx") == "default/b:80"  # no path = "/"


# --- hosts ----------------------------------------------------------------------------------------

def _hosts_ingress():
    return ingress(
        "hosts",
        rule("foo.bar.com", path("/", "exact-root"), path("/api", "exact-api")),
        rule("*.bar.com", path("/", "wild-root"), path("/wild", "wild-only")),
        rule(None, path("/common", "hostless"), path("/api/v2", "hostless-v2")),
    )


@pytest.mark.parametrize(("host", "p", "want"), [
    ("foo.bar.com", "/", "exact-root"),
    ("FOO.bar.com", "/x", "exact-root"),            # hosts are case-insensitive
    ("foo.bar.com:8080", "/api", "exact-api"),      # the port is not part of the host
    ("foo.bar.com", "/wild", "wild-only"),          # the wildcard rule matches foo.bar.com too
    ("foo.bar.com", "/common", "hostless"),         # rules without a host apply to every host
    ("foo.bar.com", "/api/v2/x", "hostless-v2"),    # longest match across the host's rules
    ("baz.bar.com", "/", "wild-root"),
    ("baz.bar.com", "/api", "wild-root"),           # /api belongs to foo.bar.com only
    ("a.baz.bar.com", "/", None),                   # two labels: no wildcard match
    ("bar.com", "/common", "hostless"),
    ("other.example", "/", None),
])
def test_host_matrix(host, p, want):
    got = served(table_of(_hosts_ingress()), host, p)
    assert got == (f"default/{want}:80" if want else "")


def test_precise_host_beats_wildcard_and_hostless_on_the_same_path():
    ing = ingress("x", rule(None, path("/p", "none")), rule("*.a.com", path("/p", "wild")),
                  rule("b.a.com", path("/p", "precise")))
    t = table_of(ing)
    assert served(t, "b.a.com", "/p") == "default/precise:80"
    assert served(t, "c.a.com", "/p") == "default/wild:80"
    assert served(t, "a.com", "/p") == "default/none:80"


# --- classes --------------------------------------------------------------------------------------

def test_class_selection():
    mine = ingress("mine", rule("a.x", path("/", "a")))
    other = ingress("other", rule("b.x", path("/", "b")), cls="nginx")
    classless = ingress("classless", rule("c.x", path("/", "c")), cls=None)
    annotated = ingress("annotated", rule("d.x", path("/", "d")), cls=None,
                        annotations={"kubernetes.io/ingress.class": "knet"})
    assert is_ours(mine, "knet", []) and not is_ours(other, "knet", [])
    assert is_ours(annotated, "knet", [])
    assert not is_ours(classless, "knet", [ingress_class("knet")])
    assert is_ours(classless, "knet", [ingress_class("knet", default=True)])
    assert not is_ours(classless, "knet", [ingress_class("nginx", default=True)])
    t = table_of(mine, other, classless, annotated, classes=[ingress_class("knet", default=True)])
    assert t.ingresses == ["default/annotated", "default/classless", "default/mine"]
    assert "b.x" not in t.servers


# --- conflicts: the oldest Ingress wins ---------------------------------------------------------

def test_conflict_oldest_wins():
    old = ingress("old", rule("a.x", path("/api", "old-svc")), created="2024-01-01T00:00:00Z", namespace="zz")
    new = ingress("new", rule("a.x", path("/api", "new-svc"), path("/new", "new-svc")),
                  created="2024-06-01T00:00:00Z")
    t = table_of(new, old)
    assert served(t, "a.x", "/api") == "zz/old-svc:80"
    assert served(t, "a.x", "/new") == "default/new-svc:80"   # the rest of the newer Ingress is served
    assert any("conflict" in p and "default/new" in p and "zz/old" in p for p in t.problems)


def test_exact_and_prefix_on_the_same_path_do_not_conflict():
    a = ingress("a", rule("h", path("/foo", "pre")), created="2024-01-01T00:00:00Z")
    b = ingress("b", rule("h", path("/foo", "exact", kind="Exact")), created="2024-02-01T00:00:00Z")
    t = table_of(a, b)
    assert not t.problems
    assert served(t, "h", "/foo") == "default/exact:80" and served(t, "h", "/foo/x") == "default/pre:80"


def test_same_age_tie_broken_by_namespace_and_name():
    a = ingress("b-ing", rule("h", path("/", "from-b")))
    b = ingress("a-ing", rule("h", path("/", "from-a")))
    assert served(table_of(a, b), "h", "/") == "default/from-a:80"


# --- backends -------------------------------------------------------------------------------------

def test_backend_port_by_number_and_by_name():
    ing = ingress("p", rule("h", path("/num", "web", 8080), path("/name", "web", "http"), path("/x", "web", 9999)))
    svc = service("web", ("http", 8080), ("admin", 9000))
    slices = [endpoint_slice("web", ["10.244.1.5"], port=80, port_name="http"),
              endpoint_slice("web", ["10.244.1.5"], port=9090, port_name="admin", suffix="b")]
    t = table_of(ing, services=[svc], slices=slices)
    num, name = t.lookup("h", "/num").target, t.lookup("h", "/name").target
    assert num.upstream == name.upstream == "default_web_8080"
    assert t.upstreams["default_web_8080"].servers == ("10.244.1.5:80",)  # the slice's (target) port
    bad = t.lookup("h", "/x").target
    assert bad.status == 503 and "no TCP port 9999" in bad.message


def test_ready_endpoints_and_terminating_fallback():
    ing = ingress("e", rule("h", path("/", "web")))
    t = table_of(ing, services=[service("web")],
                 slices=[endpoint_slice("web", ["10.244.1.3", "10.244.1.2"], not_ready=["10.244.1.9"],
                                        terminating=["10.244.1.8"])])
    assert t.upstreams["default_web_80"].servers == ("10.244.1.2:80", "10.244.1.3:80")
    t = table_of(ing, services=[service("web")],
                 slices=[endpoint_slice("web", [], not_ready=["10.244.1.9"], terminating=["10.244.1.8"])])
    assert t.upstreams["default_web_80"].servers == ("10.244.1.8:80",)


@pytest.mark.parametrize(("services", "slices", "text"), [
    ([], [], "service default/web not found"),
    ([service("web")], [], "no ready endpoints for service default/web:80"),
    ([service("web", kind="ExternalName")], [], "ExternalName"),
])
def test_unproxiable_backends_answer_503(services, slices, text):
    t = table_of(ingress("e", rule("h", path("/", "web"))), services=services, slices=slices)
    target = t.lookup("h", "/").target
    assert not target.proxied and target.status == 503 and text in target.message


def test_resource_backend_is_503():
    ing = ingress("r", rule("h", path("/", "web")))
    ing.spec.rules[0].http.paths[0].backend.service = None
    ing.spec.rules[0].http.paths[0].backend.resource = {"kind": "StorageBucket", "name": "b"}
    target = table_of(ing, services=[], slices=[]).lookup("h", "/").target
    assert target.status == 503 and "StorageBucket" in target.message


# --- default backends ------------------------------------------------------------------------------

def test_default_backends():
    whale = ingress("whale", rule("a.whale.hey", path("/app", "a")), default=backend("whale-default"),
                    created="2024-01-01T00:00:00Z")
    later = ingress("later", rule("l.x", path("/app", "l")), default=backend("later-default"),
                    created="2024-03-01T00:00:00Z")
    t = table_of(whale, later)
    assert served(t, "unknown.host", "/") == "default/whale-default:80"   # oldest defaultBackend
    assert served(t, "a.whale.hey", "/other") == "default/whale-default:80"
    assert served(t, "l.x", "/other") == "default/later-default:80"        # an Ingress's own hosts


def test_default_backend_option_and_builtin():
    ing = ingress("n", rule("h", path("/a", "a")))
    assert table_of(ing).lookup("zzz", "/").target.status == 404
    t = table_of(ing, services=[service("a"), service("fallback", ("http", 8080))],
                 slices=[endpoint_slice("a", ["10.244.1.2"]),
                         endpoint_slice("fallback", ["10.244.1.3"], port=8080, port_name="http")],
                 default_backend="default/fallback:8080")
    assert served(t, "zzz", "/") == "default/fallback:8080"


# --- invalid input is skipped, the rest served ----------------------------------------------------

def test_invalid_paths_and_hosts_are_reported_not_fatal():
    ing = ingress("bad", rule("ok.x", path('/a"b', "a", kind="ImplementationSpecific"), path("/fine", "a")),
                  rule("ok.x", path("/with space", "a", kind="ImplementationSpecific")))
    ing.spec.rules.append(ing.spec.rules[0].model_copy(update={"host": "bad_host.x"}))
    t = table_of(ing)
    assert served(t, "ok.x", "/fine") == "default/a:80"
    assert len([p for p in t.problems if "ignored" in p]) == 3
    assert "bad_host.x" not in t.servers


def test_read_timeout_annotation():
    ok = ingress("t", rule("h", path("/", "a")), annotations={"ingress.knet.io/proxy-read-timeout": "5"})
    t = table_of(ok)
    assert t.lookup("h", "/").read_timeout == 5 and not t.problems
    bad = ingress("t", rule("h", path("/", "a")), annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "5m"})
    t = table_of(bad)
    assert t.lookup("h", "/").read_timeout is None and "proxy-read-timeout" in t.problems[0]
