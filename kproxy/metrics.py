"""kproxy's metrics, under kube-proxy's names, types, labels and buckets (pkg/proxy/metrics), so the
dashboards and alerts written for kube-proxy read kproxy unchanged.

kube-proxy registers some metrics only in some modes; so does kproxy: the iptables-restore ones
for the modes that program with iptables-restore (iptables, and the filter/portal rules of
userspace), the nftables ones for nftables. `KUBE_PROXY_NAMES` lists what every mode serves (the
scrape test compares a running kproxy's names with it). Two kproxy extras have no kube-proxy
counterpart for every mode: `kproxy_service_ports` and `kproxy_programmed_entries`.
"""

from __future__ import annotations

from knet import metrics

IP_FAMILY = "IPv4"  # the default primary family; kube-proxy labels per-family metrics with it


def exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    return tuple(start * factor ** i for i in range(count))


def linear(start: float, width: float, count: int) -> tuple[float, ...]:
    return tuple(start + width * i for i in range(count))


SYNC_BUCKETS = exponential(0.001, 2, 15)  # 1 ms .. 16.4 s
# component-base's MergeBuckets starts from a 0 bucket, then 0.25 s, 0.5 s, 1-59 s, 60-115 s, 2-5 min.
PROGRAMMING_BUCKETS = (0.0, *linear(0.25, 0.25, 2), *linear(1, 1, 59), *linear(60, 5, 12), *linear(120, 30, 7))

KUBE_PROXY_NAMES = (
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_network_programming_duration_seconds",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
    "kubeproxy_proxy_healthz_total",
    "kubeproxy_proxy_livez_total",
)
IPTABLES_NAMES = (
    "kubeproxy_sync_proxy_rules_iptables_total",
    "kubeproxy_sync_proxy_rules_iptables_last",
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
)
NFTABLES_NAMES = (
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
    "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
)
MODE_NAMES = {"iptables": IPTABLES_NAMES, "userspace": IPTABLES_NAMES[2:], "nftables": NFTABLES_NAMES, "ebpf": ()}


class ProxyMetrics:
    """Every metric kproxy serves in `mode`; the daemon updates them, the registry renders them."""

    def __init__(self, mode: str, registry: metrics.Registry | None = None, ip_family: str = IP_FAMILY) -> None:
        """`ip_family`: the label of what is measured once per sync for both families (the primary's)."""
        self.mode = mode
        self.ip_family = ip_family
        r = self.registry = registry or metrics.Registry()
        fam = ["ip_family"]
        self.sync = r.histogram("kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
                                fam, buckets=SYNC_BUCKETS)
        self.sync_full = r.histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                     "SyncProxyRules latency in seconds for full resyncs", fam, buckets=SYNC_BUCKETS)
        self.sync_partial = r.histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                        "SyncProxyRules latency in seconds for partial resyncs", fam,
                                        buckets=SYNC_BUCKETS)
        self.last_sync = r.gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                                 "The last time proxy rules were successfully synced", fam)
        self.last_queued = r.gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                   "The last time a sync of proxy rules was queued", fam)
        self.programming = r.histogram("kubeproxy_network_programming_duration_seconds",
                                       "In Cluster Network Programming Latency in seconds", fam,
                                       buckets=PROGRAMMING_BUCKETS)
        self.endpoint_pending = r.gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                        "Pending proxy rules Endpoint changes")
        self.endpoint_changes = r.counter("kubeproxy_sync_proxy_rules_endpoint_changes_total",
                                          "Cumulative proxy rules Endpoint changes")
        self.service_pending = r.gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
                                       "Pending proxy rules Service changes")
        self.service_changes = r.counter("kubeproxy_sync_proxy_rules_service_changes_total",
                                         "Cumulative proxy rules Service changes")
        self.no_local = r.gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                                "Number of services with a Local traffic policy and no endpoints",
                                ["ip_family", "traffic_policy"])
        self.healthz = r.counter("kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", ["code"])
        self.livez = r.counter("kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", ["code"])
        names = MODE_NAMES.get(mode, ())
        self.rules_total = self.rules_last = self.restore_failures = self.partial_restore_failures = None
        self.nft_sync_failures = self.nft_cleanup_failures = None
        if "kubeproxy_sync_proxy_rules_iptables_total" in names:
            self.rules_total = r.gauge("kubeproxy_sync_proxy_rules_iptables_total",
                                       "Total number of iptables rules owned by kube-proxy", ["ip_family", "table"])
            self.rules_last = r.gauge("kubeproxy_sync_proxy_rules_iptables_last",
                                      "Number of iptables rules written by kube-proxy in last sync",
                                      ["ip_family", "table"])
        if "kubeproxy_sync_proxy_rules_iptables_restore_failures_total" in names:
            self.restore_failures = r.counter("kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                                              "Cumulative proxy iptables restore failures", fam)
            self.partial_restore_failures = r.counter(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                "Cumulative proxy iptables partial restore failures", fam)
        if mode == "nftables":
            self.nft_sync_failures = r.counter("kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                                               "Cumulative proxy nftables sync failures", fam)
            self.nft_cleanup_failures = r.counter("kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                                                  "Cumulative proxy nftables cleanup failures", fam)
        self.service_ports = r.gauge("kproxy_service_ports", "Service ports being proxied", ["mode"])
        self.entries = r.gauge("kproxy_programmed_entries", "Rules, map entries or listeners programmed", ["mode"])
        # Series that exist from the start (kube-proxy's counters are 0, not absent, before the first event).
        for c in (self.endpoint_changes, self.service_changes):
            c.inc(0)
        for c in (self.restore_failures, self.partial_restore_failures, self.nft_sync_failures,
                  self.nft_cleanup_failures):
            if c is not None:
                c.inc(0, self.ip_family)
        for g in (self.endpoint_pending, self.service_pending):
            g.set(0)
        for policy in ("internal", "external"):
            self.no_local.set(0, self.ip_family, policy)

    def observe_sync(self, seconds: float, full: bool, at: float) -> None:
        self.sync.observe(seconds, self.ip_family)
        (self.sync_full if full else self.sync_partial).observe(seconds, self.ip_family)
        self.last_sync.set(at, self.ip_family)

    def sync_failed(self, partial: bool) -> None:
        if self.restore_failures is not None:
            self.restore_failures.inc(1, self.ip_family)
            if partial and self.partial_restore_failures is not None:
                self.partial_restore_failures.inc(1, self.ip_family)
        if self.nft_sync_failures is not None:
            self.nft_sync_failures.inc(1, self.ip_family)
