"""flannel_py: a flanneld-like overlay daemon (etcd subnet leases, VXLAN or host-gw data path)."""
