"""Resource usage of the node's pods and containers, as cAdvisor measures it for the kubelet:

- CPU from each cgroup's `cpu.stat` (usage_usec: present on every cgroup v2 directory, also
  without the cpu controller), as a rate in nanocores between two samples (the Summary API's
  usageNanoCores, which metrics-server serves to `kubectl top`);
- memory working set: `memory.current` minus inactive file pages where the memory controller is
  enabled; else (a cgroup v2 hierarchy next to v1 controllers, as on this machine) the resident
  set sizes of the cgroup's processes;
- network counters of the pod's interfaces from `/proc/<pid>/net/dev` of a process in the pod
  (what cAdvisor reads: the kernel's per-device counters of that network namespace), exposed
  under cAdvisor's metric names.

Parsing and rate arithmetic are pure; `Sampler` is the thread that samples every few seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from knet import cgroups

PAGE = os.sysconf("SC_PAGE_SIZE")
NET_FIELDS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


@dataclass(frozen=True)
class NetCounters:
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


def parse_net_dev(text: str) -> dict[str, NetCounters]:
    """/proc/net/dev: per interface, receive (bytes packets errs drop fifo frame compressed
    multicast) then transmit (bytes packets errs drop fifo colls carrier compressed)."""
    out: dict[str, NetCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        if not sep or len(values) < 16:
            continue
        try:
            v = [int(x) for x in values]
        except ValueError:
            continue
        out[name.strip()] = NetCounters(v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11])
    return out


def net_counters(pid: int) -> dict[str, NetCounters]:
    """The interfaces of the network namespace `pid` is in (loopback left out)."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            counters = parse_net_dev(f.read())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    counters.pop("lo", None)
    return counters


def parse_cpu_stat(text: str) -> int | None:
    """usage_usec of a cgroup v2 cpu.stat, in nanoseconds."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value) * 1000
    return None


def cpu_usage_ns(cgroup: str) -> int | None:
    try:
        with open(os.path.join(cgroup, "cpu.stat")) as f:
            return parse_cpu_stat(f.read())
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def memory_working_set(cgroup: str) -> int | None:
    current = _read_int(os.path.join(cgroup, "memory.current"))
    if current is not None:
        inactive = 0
        with contextlib.suppress(OSError), open(os.path.join(cgroup, "memory.stat")) as f:
            for line in f:
                if line.startswith("inactive_file "):
                    inactive = int(line.split()[1])
        return max(0, current - inactive)
    if not os.path.isdir(cgroup):
        return None
    total = 0
    for pid in cgroups.pids(cgroup):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


@dataclass(frozen=True)
class Usage:
    """One measurement of a cgroup: cumulative CPU, the rate since the previous one, memory."""
    time: float                     # time.time() of the sample
    cpu_ns: int                     # cumulative usage
    nanocores: int | None           # rate over `window` seconds (None: first sample)
    window: float | None
    memory: int

    def stats(self) -> dict:
        """The Summary API's cpu and memory blocks."""
        t = rfc3339(self.time)
        cpu: dict = {"time": t, "usageCoreNanoSeconds": self.cpu_ns}
        if self.nanocores is not None:
            cpu["usageNanoCores"] = self.nanocores
        return {"cpu": cpu, "memory": {"time": t, "workingSetBytes": self.memory, "usageBytes": self.memory}}


def rate(prev: Usage | None, t: float, cpu_ns: int) -> tuple[int | None, float | None]:
    """(nanocores, window) between the previous sample and this one."""
    if prev is None or t <= prev.time or cpu_ns < prev.cpu_ns:
        return None, None
    window = t - prev.time
    return int((cpu_ns - prev.cpu_ns) / window), window


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodTarget:
    """What the sampler measures of one pod: its containers' cgroups and a process in its
    network namespace."""
    namespace: str
    name: str
    uid: str
    start_time: str | None
    containers: dict[str, str]      # container name -> cgroup directory
    net_pid: int | None


@dataclass
class Sampler:
    """Samples the node's cgroup and each pod's containers every `period` seconds."""
    node_name: str
    node_cgroup: str | None
    targets: Callable[[], Iterable[PodTarget]]
    period: float = 5.0
    usage: dict[str, Usage] = field(default_factory=dict)  # cgroup path -> last sample
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)

    def sample(self) -> None:
        paths = [self.node_cgroup] if self.node_cgroup else []
        for pod in self.targets():
            paths += pod.containers.values()
        now = time.time()
        fresh: dict[str, Usage] = {}
        for path in paths:
            cpu = cpu_usage_ns(path)
            if cpu is None:
                continue
            nanocores, window = rate(self.usage.get(path), now, cpu)
            fresh[path] = Usage(now, cpu, nanocores, window, memory_working_set(path) or 0)
        with self.lock:
            self.usage = fresh  # cgroups that went away are forgotten

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a bad read must not end the sampling
                self.sample()
            stop.wait(self.period)

    def last(self) -> dict[str, Usage]:
        with self.lock:
            return dict(self.usage)

    def summary(self) -> dict:
        """The kubelet's Summary API (stats/v1alpha1), the parts metrics-server reads."""
        with self.lock:
            usage = dict(self.usage)
        node: dict = {"nodeName": self.node_name, "startTime": rfc3339(self.started)}
        if self.node_cgroup and self.node_cgroup in usage:
            node.update(usage[self.node_cgroup].stats())
            if usage[self.node_cgroup].window is not None:
                node["window"] = usage[self.node_cgroup].window
        pods = []
        for pod in self.targets():
            containers = []
            total_cpu, total_rate, total_mem, windows, when = 0, 0, 0, [], 0.0
            for cname, path in pod.containers.items():
                u = usage.get(path)
                if u is None:
                    continue
                containers.append({"name": cname, "startTime": pod.start_time, **u.stats()})
                total_cpu += u.cpu_ns
                total_mem += u.memory
                when = max(when, u.time)
                if u.nanocores is not None and u.window is not None:
                    total_rate += u.nanocores
                    windows.append(u.window)
            entry: dict = {"podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                           "startTime": pod.start_time, "containers": containers}
            if containers:
                whole = Usage(when, total_cpu, total_rate if windows else None, max(windows, default=None), total_mem)
                entry.update(whole.stats())
                if windows:
                    entry["window"] = max(windows)
            if pod.net_pid:
                entry["network"] = network_stats(net_counters(pod.net_pid))
            pods.append(entry)
        return {"node": node, "pods": pods}


def network_stats(counters: dict[str, NetCounters]) -> dict:
    """The Summary API's network block: eth0 at the top, every interface listed."""
    t = rfc3339(time.time())
    interfaces = [{"name": name, "rxBytes": c.rx_bytes, "rxErrors": c.rx_errors, "txBytes": c.tx_bytes,
                   "txErrors": c.tx_errors} for name, c in sorted(counters.items())]
    top = next((i for i in interfaces if i["name"] == "eth0"), interfaces[0] if interfaces else {})
    return {"time": t, **top, "interfaces": interfaces}


NETWORK_FAMILIES = (  # cAdvisor's names, per pod interface
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", "rx_bytes"),
    ("container_network_receive_packets_total", "Cumulative count of packets received", "rx_packets"),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving",
     "rx_errors"),
    ("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving",
     "rx_dropped"),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", "tx_bytes"),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted", "tx_packets"),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting",
     "tx_errors"),
    ("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting",
     "tx_dropped"),
)


class CadvisorCollector:
    """cAdvisor's per-pod network counters (read from the kernel at scrape time) and per-container
    CPU and memory (the sampler's last sample), as prometheus_client metric families."""

    def __init__(self, targets: Callable[[], Iterable[PodTarget]], usage: Callable[[], dict[str, Usage]]) -> None:
        self.targets, self.usage = targets, usage

    def collect(self) -> Iterator[Metric]:
        pods = sorted(self.targets(), key=lambda p: (p.namespace, p.name))
        per_pod = [(p, net_counters(p.net_pid) if p.net_pid else {}) for p in pods]
        for name, help_text, attr in NETWORK_FAMILIES:
            family = CounterMetricFamily(name, help_text, labels=["interface", "namespace", "pod"])
            for pod, ifaces in per_pod:
                for iface, c in sorted(ifaces.items()):
                    family.add_metric([iface, pod.namespace, pod.name], getattr(c, attr))
            yield family
        usage = self.usage()
        cpu = CounterMetricFamily("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds",
                                  labels=["container", "namespace", "pod"])
        mem = GaugeMetricFamily("container_memory_working_set_bytes", "Current working set in bytes",
                                labels=["container", "namespace", "pod"])
        for pod in pods:
            for cname, path in sorted(pod.containers.items()):
                u = usage.get(path)
                if u is not None:
                    cpu.add_metric([cname, pod.namespace, pod.name], u.cpu_ns / 1e9)
                    mem.add_metric([cname, pod.namespace, pod.name], u.memory)
        yield cpu
        yield mem
