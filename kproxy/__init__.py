"""kproxy: a kube-proxy with iptables, userspace and eBPF data paths."""
