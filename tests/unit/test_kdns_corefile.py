"""The Corefile subset: syntax (blocks, options, quotes, comments, environment), every supported
plugin and option parsed into kdns's settings, and refusals that name what is wrong and where."""

from __future__ import annotations

import pytest

from kdns import config
from kdns.config import CorefileError, from_corefile
from kdns.corefile import parse, tokenize
from kdns.daemon import parse_args
from kdns.fcache import Prefetch, ServeStale
from kdns.forward import Upstream
from kdns.wire import NXDOMAIN, REFUSED, SERVFAIL

# kubeadm's Corefile, with a stub domain.
KUBEADM = """
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
consul.local:53 {  # a stub domain
    errors
    cache 30
    forward . 10.150.0.1
}
"""


def resolv(path: str) -> list[Upstream]:
    assert path == "/etc/resolv.conf"
    return [Upstream("192.0.2.53"), Upstream("192.0.2.54")]


def test_kubeadm_corefile():
    s = from_corefile(KUBEADM, read=resolv)
    root, consul = s.blocks
    assert root.zones == ("",) and root.port == 53 and root.label == "." and consul.label == "consul.local."
    k = root.kubernetes
    assert k is not None and k.zone == "cluster.local" and k.reverse_zones == ("in-addr.arpa", "ip6.arpa")
    assert k.pods == "insecure" and k.ttl == 30 and k.fallthrough == ("in-addr.arpa", "ip6.arpa")
    assert k.falls_through("in-addr.arpa") and not k.falls_through("cluster.local")
    fwd, = root.forwards
    assert fwd.zone == "" and fwd.to == (Upstream("192.0.2.53"), Upstream("192.0.2.54"))
    assert fwd.max_concurrent == 1000 and fwd.policy == "random" and fwd.max_fails == 2
    assert root.cache is not None and root.cache.success_ttl == 30 and root.cache.denial_ttl == 30
    assert root.errors and root.loop and root.loadbalance and not root.log and not root.autopath
    assert s.health == ":8080" and s.lameduck == 5.0 and s.ready == ":8181" and s.prometheus == ":9153"
    assert s.reload == (30.0, 15.0) and s.kubernetes is k and s.listen() == [("0.0.0.0", 53)]
    assert consul.zones == ("consul.local",) and consul.forwards[0].to == (Upstream("10.150.0.1"),)


def test_every_option():
    text = """
    cluster.local:1053 example.org:1053 {
        bind 127.0.0.1 ::1
        kubernetes cluster.local {
            pods verified
            ttl 7
            fallthrough
            kubeconfig /etc/kdns.kubeconfig kind
            startup_timeout 10s
        }
        autopath @kubernetes
        log
        forward example.org dns://10.0.0.1:5353 [fd00::2]:53 {
            except internal.example.org
            policy round_robin
            max_concurrent 50
            max_fails 3
            health_check 1s no_rec domain health.example.org.
            expire 30s
            read_timeout 1500ms
            force_tcp
            prefer_udp
            failover SERVFAIL REFUSED
        }
        cache 300 {
            success 5000 600 10
            denial 2048 60 1
            prefetch 5 2m 20%
            serve_stale 1h verify 30
        }
        prometheus 127.0.0.1:9253
        reload 10s 2s
    }
    """
    s = from_corefile(text)
    b, = s.blocks
    assert b.zones == ("cluster.local", "example.org") and b.port == 1053 and b.bind == ("127.0.0.1", "::1")
    assert s.listen() == [("127.0.0.1", 1053), ("::1", 1053)]
    k = b.kubernetes
    assert (k.pods, k.ttl, k.fallthrough, k.kubeconfig, k.context, k.startup_timeout) == \
        ("verified", 7, (), "/etc/kdns.kubeconfig", "kind", 10.0)
    assert k.falls_through("cluster.local")
    assert b.autopath and b.log
    f, = b.forwards
    assert f.zone == "example.org" and f.to == (Upstream("10.0.0.1", 5353), Upstream("fd00::2", 53))
    assert f.excepted == ("internal.example.org",) and f.policy == "round_robin" and f.max_concurrent == 50
    assert (f.max_fails, f.health_check, f.expire, f.timeout, f.force_tcp) == (3, 1.0, 30.0, 1.5, True)
    assert (f.health_rd, f.health_domain) == (False, "health.example.org")
    assert f.failover == frozenset({SERVFAIL, REFUSED})
    c = b.cache
    assert (c.success_capacity, c.success_ttl, c.success_min_ttl) == (4864, 600, 10)  # rounded to 256s
    assert (c.denial_capacity, c.denial_ttl, c.denial_min_ttl) == (2048, 60, 1)
    assert c.prefetch == Prefetch(5, 120.0, 20) and c.serve_stale == ServeStale(3600.0, True, 30)
    assert s.prometheus == "127.0.0.1:9253" and s.reload == (10.0, 2.0)


def test_defaults_follow_coredns():
    s = from_corefile(". {\n kubernetes cluster.local\n cache\n forward . 10.0.0.1\n prometheus\n health\n}\n")
    b, = s.blocks
    assert b.kubernetes.pods == "disabled" and b.kubernetes.ttl == 5 and b.kubernetes.fallthrough is None
    c = b.cache
    assert (c.success_capacity, c.success_ttl, c.denial_ttl, c.success_min_ttl) == (9984, 3600, 1800, 5)
    assert c.prefetch is None and c.serve_stale is None
    assert from_corefile(". {\n cache {\n prefetch 2\n serve_stale\n }\n}").blocks[0].cache.prefetch == Prefetch(2)
    assert s.prometheus == "localhost:9153" and s.health == ":8080" and s.reload is None


@pytest.mark.parametrize("text, message", [
    (". {\n  loadbalance weighted /etc/weights\n}", "line 2: loadbalance: kdns implements `loadbalance [round_robin]`"),
    (". {\n  kubernetes cluster.local\n  rewrite name a b\n}", "line 3: plugin 'rewrite'"),
    (". {\n forward . 10.0.0.1 {\n  tls_servername dns.example\n }\n}", "line 3: forward tls_servername"),
    (". {\n forward . tls://9.9.9.9\n}", "plain DNS only"),
    (". {\n forward . dns.google\n}", "not an IP address"),
    (". {\n forward .\n}", "forward FROM TO"),
    (". {\n forward . 10.0.0.1 {\n policy fastest\n }\n}", "random | round_robin | sequential"),
    (". {\n forward . 10.0.0.1 {\n failover NOERROR\n }\n}", "not NOERROR"),
    (". {\n cache 30 {\n keepttl\n }\n}", "line 3: cache keepttl: option not supported"),
    (". {\n cache {\n prefetch 3 1m 20\n }\n}", "needs its % sign"),
    (". {\n cache {\n prefetch 3 1m 95%\n }\n}", "outside 10..90"),
    (". {\n cache abc\n}", "'abc' is not a number"),
    (". {\n kubernetes cluster.local {\n pods sometimes\n }\n}", "disabled, insecure or verified"),
    (". {\n kubernetes cluster.local {\n labels app=x\n }\n}", "kubernetes labels: option not supported"),
    (". {\n kubernetes a.local b.local\n}", "one cluster zone"),
    (". {\n kubernetes\n}", "one cluster zone"),
    (". {\n kubernetes cluster.local\n autopath @kubernetes\n}", "needs `pods verified`"),
    (". {\n autopath /etc/resolv.conf\n}", "`autopath @kubernetes` only"),
    (". {\n errors\n errors\n}", "only once per server block"),
    (". {\n reload 1s\n}", "INTERVAL >= 2s"),
    (". {\n health :8080\n}\nx.org {\n health :8081\n}", "configured differently in another server block"),
    (".:53 {\n}\n.:53 {\n}", "zone '.' is in more than one server block"),
    (".:53 {\n}\nx.org:54 {\n}", "several ports"),
    ("tls://.:853 {\n}", "plain DNS (dns://) only"),
    (". {\n log\n", "line 1: { is never closed"),
    (". log\n", "has no { ... }"),
    ("}", "unexpected }"),
    ('. {\n forward . "10.0.0.1\n}', "unterminated quote"),
    ("", "no server block"),
])
def test_refused_with_a_message_that_names_it(text, message):
    with pytest.raises(CorefileError) as e:
        from_corefile(text, read=resolv)
    assert message in str(e.value)


def test_syntax_details():
    blocks = parse('# a comment\nexample.org, example.com:5353 {\n  forward . "10.0.0.1" # why\n'
                   "  log }\n", env={})
    b, = blocks
    assert b.keys == ["example.org", "example.com:5353"]
    assert [(d.name, d.args) for d in b.directives] == [("forward", [".", "10.0.0.1"]), ("log", [])]
    assert [t.text for t in tokenize("a {$UPSTREAM} b", env={"UPSTREAM": "10.1.1.1"})] == ["a", "10.1.1.1", "b"]
    assert [t.text for t in tokenize('"a \\"quoted\\" word"')] == ['a "quoted" word']


def test_durations():
    assert config.duration("500ms", "x") == 0.5 and config.duration("1m30s", "x") == 90.0
    assert config.duration("2h", "x") == 7200.0 and config.duration("15", "x") == 15.0
    with pytest.raises(CorefileError):
        config.duration("5 minutes", "x")


def test_missing_resolv_conf_is_refused(tmp_path):
    with pytest.raises(CorefileError, match="no nameserver"):
        from_corefile(". {\n forward . /dev/null\n}")
    with pytest.raises(CorefileError, match="No such file"):
        from_corefile(f". {{\n forward . {tmp_path}/missing\n}}")


def test_flags_become_one_server_block():
    args = parse_args(["--listen", "10.96.0.10:53", "--cluster-domain", "Example.Internal.", "--pods", "verified",
                       "--autopath", "--ttl", "9", "--negative-ttl", "3", "--max-cache-ttl", "600"])
    s = config.from_flags(args, [Upstream("192.0.2.1")])
    b, = s.blocks
    k = b.kubernetes
    assert (k.zone, k.pods, k.ttl, k.negative_ttl) == ("example.internal", "verified", 9, 3)
    assert b.autopath and b.bind == ("10.96.0.10",) and b.port == 53
    f, = b.forwards
    assert f.policy == "sequential" and f.failover == frozenset({SERVFAIL, REFUSED}) and f.max_concurrent == 1000
    assert b.cache.success_ttl == 600 and NXDOMAIN not in f.failover
    assert s.prometheus == s.health == s.ready == "0.0.0.0:9153"


def test_the_labs_corefile_has_autopath_and_its_identity_the_pods():
    """The lab runs kdns with `pods verified` + `autopath @kubernetes` (deploy/ keeps kubeadm's
    `pods insecure`): the lab's identity for it must be granted what that configuration lists and
    watches (services, endpointslices, pods), and nothing in deploy/ may change for it."""
    from lab.apiserver import auth, bootstrap, main, rbac
    from lab.bringup import dns

    text = dns.COREFILE.format(ip="192.168.33.2", kubeconfig="/k", metrics=9153, upstream="192.168.33.100:53",
                               stub_zone=dns.STUB_ZONE, stub="192.168.33.100:5353")
    root = from_corefile(text).blocks[0]
    assert root.kubernetes is not None and root.kubernetes.pods == "verified" and root.autopath

    policy = bootstrap.load_policy([main.LAB_POLICY, main.LAB_DNS_POLICY])
    user, groups = auth.LAB_IDENTITIES[dns.USER]
    keys = set(rbac.subject_keys(user, groups))
    roles = {o["metadata"]["name"]: o for o in policy if o["kind"] == "ClusterRole"}
    bound = [o["roleRef"]["name"] for o in policy if o["kind"] == "ClusterRoleBinding"
             and keys & set(rbac.binding_subject_keys(o))]
    grants = [rbac.Grant("ClusterRoleBinding", name, "ClusterRole", name, user,
                         tuple(rbac.Rule.parse(r) for r in roles[name]["rules"])) for name in bound]
    for group, resource in (("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "pods")):
        for verb in ("list", "watch"):
            assert rbac.decide(rbac.Attributes(user, groups, verb, group, resource), grants).allowed, (resource, verb)
    assert not rbac.decide(rbac.Attributes(user, groups, "list", "", "secrets"), grants).allowed
    kdns_user, kdns_groups = auth.LAB_IDENTITIES["kdns"]  # deploy's identity: still no pods
    kdns_keys = set(rbac.subject_keys(kdns_user, kdns_groups))
    assert all(o["roleRef"]["name"] != "knet:lab-dns" for o in policy if o["kind"] == "ClusterRoleBinding"
               and kdns_keys & set(rbac.binding_subject_keys(o)))
