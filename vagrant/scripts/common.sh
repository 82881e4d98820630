#!/usr/bin/env bash
# Every node: kernel settings, containerd (Debian's), kubeadm/kubelet/kubectl (pkgs.k8s.io),
# python3 for the host side of knet-cni, kubelet bound to the private-network address.
# Env (from the Vagrantfile): K8S_MINOR, NODE_IP.
set -euo pipefail
: "${K8S_MINOR:?}" "${NODE_IP:?}"
export DEBIAN_FRONTEND=noninteractive

# kubelet refuses to run with swap on.
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab

cat >/etc/modules-load.d/knet.conf <<MODS
overlay
br_netfilter
vxlan
MODS
modprobe overlay
modprobe br_netfilter
modprobe vxlan
cat >/etc/sysctl.d/90-knet.conf <<SYSCTL
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
SYSCTL
sysctl --system >/dev/null

apt-get update -qq
# python3: the container runtime runs /opt/cni/bin/knet-cni on the host (docs/install.md).
# linux-headers: kproxy's ebpf mode compiles against the running kernel's headers.
apt-get install -y -qq --no-install-recommends containerd apt-transport-https ca-certificates curl gpg \
  python3 iptables wget "linux-headers-$(uname -r)" podman >/dev/null

# containerd: systemd cgroup driver (kubeadm's kubelet default) and its default config otherwise.
mkdir -p /etc/containerd
containerd config default >/etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl restart containerd

keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
if [ ! -f "$keyring" ]; then
  mkdir -p /etc/apt/keyrings
  curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${K8S_MINOR}/deb/Release.key" | gpg --dearmor -o "$keyring"
fi
echo "deb [signed-by=$keyring] https://pkgs.k8s.io/core:/stable:/v${K8S_MINOR}/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
# kubernetes-cni brings the reference plugins; knet's conflist chains `portmap`.
apt-get install -y -qq kubelet kubeadm kubectl kubernetes-cni >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# The NAT interface (eth0) has the default route; the cluster talks on the private network.
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" >/etc/default/kubelet
systemctl enable --now kubelet
echo "common: node ${NODE_IP} ready for kubeadm"
