"""iptables data path: kube-proxy's chain layout, applied with iptables-restore."""
