"""kproxy.config: a KubeProxyConfiguration as kubeadm ships it, flags over the file, kube-proxy's
defaults per mode, and bad input refused with one line naming the field."""

from __future__ import annotations

import pytest

from kproxy import conntrack
from kproxy.config import ConfigError, Conntrack, Settings, family_cidr, merge, parse, parse_duration, with_defaults
from kproxy.daemon import parse_args

# `kubeadm config print init-defaults --component-configs KubeProxyConfiguration` (v1.30-1.33 shape)
KUBEADM = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"""


def test_kubeadms_file_means_kube_proxys_defaults():
    s = parse(KUBEADM)
    assert s.cluster_cidr == "10.244.0.0/16" and s.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"
    assert s.ignored == ()
    e = with_defaults(s, "Node-1")
    assert (e.mode, e.node_name, e.metrics_bind_address, e.healthz_bind_address) == \
        ("iptables", "node-1", "127.0.0.1:10249", "0.0.0.0:10256")
    assert (e.sync_period, e.periodic_sync, e.min_sync_period, e.full_sync_period) == (30.0, 30.0, 1.0, 3600.0)
    assert e.conntrack == Conntrack(32768, 131072, 86400.0, 3600.0)


def test_nftables_reads_its_own_section_and_syncs_hourly():
    text = KUBEADM.replace('mode: ""', "mode: nftables").replace(
        "nftables:\n  masqueradeAll: false", "nftables:\n  masqueradeAll: true")
    text = text.replace("  masqueradeAll: true\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s",
                        "  masqueradeAll: true\n  masqueradeBit: 14\n  minSyncPeriod: 250ms\n  syncPeriod: 1m0s")
    e = with_defaults(parse(text), "node1")
    assert (e.mode, e.masquerade_all, e.min_sync_period, e.sync_period, e.periodic_sync) == \
        ("nftables", True, 0.25, 60.0, 3600.0)


def test_every_field_used():
    s = parse("""\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: userspace
hostnameOverride: " Worker-7 "
clusterCIDR: "fd00::/48,10.244.0.0/16"
bindAddress: 192.168.33.11
metricsBindAddress: 0.0.0.0
healthzBindAddress: "192.168.33.11:12345"
udpIdleTimeout: 250ms
oomScoreAdj: -999
nodePortAddresses: [192.168.33.0/24, primary]
logging: {format: json}
iptables: {syncPeriod: 1h30m, minSyncPeriod: 1.5s, masqueradeAll: true}
conntrack: {maxPerCore: 0, min: 5, tcpEstablishedTimeout: 2s, tcpCloseWaitTimeout: 1m, tcpBeLiberal: true,
            udpTimeout: 30s, udpStreamTimeout: 2m0s}
featureGates: {SomeGate: true}
""")
    assert s.mode == "userspace" and s.hostname_override == "worker-7"
    # a dual-stack pair: each family's proxier takes its own CIDR
    assert s.cluster_cidr == "fd00::/48,10.244.0.0/16"
    assert (family_cidr(s.cluster_cidr, 4), family_cidr(s.cluster_cidr, 6)) == ("10.244.0.0/16", "fd00::/48")
    assert (s.metrics_bind_address, s.healthz_bind_address) == ("0.0.0.0:10249", "192.168.33.11:12345")
    assert (s.sync_period, s.min_sync_period, s.masquerade_all) == (5400.0, 1.5, True)
    assert s.udp_idle_timeout == 0.25 and s.oom_score_adj == -999 and s.logging_format == "json"
    assert s.node_port_addresses == ("192.168.33.0/24", "primary")
    assert s.conntrack == Conntrack(0, 5, 2.0, 60.0, True, 30.0, 120.0)
    assert s.ignored == ("featureGates",)
    with pytest.raises(ConfigError, match=r"nodePortAddresses \['192.168.33.0/24', 'primary'\] is not supported"):
        with_defaults(s, "node1")  # read, but not applied yet: refused rather than silently ignored


@pytest.mark.parametrize("change,message", [
    ("mode: ''\nmodee: iptables", 'unknown field "modee"'),
    ("iptables:\n  syncPeriod: 0s\n  syncperiod: 10s", 'unknown field "iptables.syncperiod"'),
    ("conntrack:\n  maxPerCore: lots", "conntrack.maxPerCore: must be an integer"),
    ("iptables:\n  syncPeriod: 30", "iptables.syncPeriod: 30 is not a duration"),
    ("iptables:\n  syncPeriod: 30x", "iptables.syncPeriod: '30x' is not a duration"),
    ("iptables:\n  minSyncPeriod: -1s", "must not be negative"),
    ("mode: ipvs", "mode 'ipvs' is kube-proxy's, not kproxy's"),
    ("mode: turbo", "mode 'turbo' is not a proxy mode"),
    ("clusterCIDR: 10.244.0.0/33", "clusterCIDR: '10.244.0.0/33' is not a CIDR"),
    ("metricsBindAddress: localhost:10249", "metricsBindAddress: 'localhost:10249' is not an IP address"),
    ("healthzBindAddress: 0.0.0.0:99999", "has no valid port"),
    ("iptables:\n  masqueradeBit: 15", "iptables.masqueradeBit: 15 is not supported"),
    ("iptables:\n  masqueradeAll: yes please", "iptables.masqueradeAll: must be true or false"),
    ("oomScoreAdj: 5000", "oomScoreAdj: must be an integer from -1000 to 1000"),
    ("nodePortAddresses: [eth0]", "nodePortAddresses: 'eth0' is not a CIDR"),
    ("detectLocalMode: InterfaceNamePrefix", "detectLocalMode: 'InterfaceNamePrefix' is not supported"),
    ("conntrack: 5", "conntrack: must be a mapping"),
])
def test_bad_input_is_refused_with_one_line_naming_the_field(change, message):
    base = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
    with pytest.raises(ConfigError) as e:
        parse(base + change, "config.conf")
    assert message in str(e.value) and str(e.value).startswith("config.conf: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1beta9",
     "expected kubeproxy.config.k8s.io/v1alpha1"),
    ("- a\n- b", "not a KubeProxyConfiguration"),
    ("mode: [unclosed", "not YAML (line 1)"),
])
def test_not_a_configuration(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


@pytest.mark.parametrize("text,seconds", [
    ("0", 0.0), ("0s", 0.0), ("30s", 30.0), ("1h0m0s", 3600.0), ("1m30s", 90.0), ("100ms", 0.1),
    ("1.5h", 5400.0), ("2h45m", 9900.0), ("500us", 0.0005), ("-1m", -60.0),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_flags_override_the_file(tmp_path):
    conf = tmp_path / "config.conf"
    conf.write_text(KUBEADM.replace('mode: ""', "mode: nftables").replace('hostnameOverride: ""',
                                                                         "hostnameOverride: a"))
    _, s = parse_args(["--config", str(conf), "--proxy-mode", "iptables", "--sync-period", "10s",
                          "--metrics-bind-address", "192.168.1.1:9000", "--conntrack-min", "7"])
    assert (s.mode, s.node_name, s.sync_period, s.metrics_bind_address) == ("iptables", "a", 10.0, "192.168.1.1:9000")
    assert s.conntrack.min == 7 and s.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"
    _, s = parse_args(["--config", str(conf), "--node-name", "b", "--mode", "userspace", "--healthz-bind-address", ""])
    assert (s.mode, s.node_name, s.healthz_bind_address) == ("userspace", "b", None)
    assert merge(Settings(mode="ebpf"), {"mode": None}).mode == "ebpf"


def test_a_bad_flag_or_file_exits_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(tmp_path / "missing.conf")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kproxy: error: ") and "missing.conf: No such file" in err and "\n" not in err
    with pytest.raises(SystemExit):
        parse_args(["--proxy-mode", "ipvs"])
    assert "mode 'ipvs'" in capsys.readouterr().err


def test_conntrack_sysctls_as_kube_proxy_sets_them(tmp_path):
    plan = conntrack.sysctl_plan(Conntrack(32768, 131072, 86400.0, 3600.0, True, 0.0, 120.0), cpus=2)
    assert plan == [("nf_conntrack_max", 131072), ("nf_conntrack_tcp_timeout_established", 86400),
                    ("nf_conntrack_tcp_timeout_close_wait", 3600), ("nf_conntrack_udp_timeout_stream", 120),
                    ("nf_conntrack_tcp_be_liberal", 1)]
    assert conntrack.sysctl_plan(Conntrack(0, 131072), cpus=2) == []  # maxPerCore 0: the table size is left
    (tmp_path / "nf_conntrack_tcp_timeout_established").write_text("432000\n")
    (tmp_path / "nf_conntrack_tcp_timeout_close_wait").write_text("3600\n")
    problems = conntrack.apply_sysctls([*plan[1:3], ("nf_conntrack_max", 5)], str(tmp_path))
    assert (tmp_path / "nf_conntrack_tcp_timeout_established").read_text() == "86400\n"
    assert problems == ["nf_conntrack_max=5 not set: No such file or directory"]
