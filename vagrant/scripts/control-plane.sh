#!/usr/bin/env bash
# Control plane: kubeadm init with knet's CIDRs and without kube-proxy and CoreDNS (kproxy and
# kdns replace them), the knet image, deploy/ (flannel-py's kube subnet manager: the Nodes'
# podCIDRs from kubeadm's --pod-network-cidr, no etcd access).
# Env: POD_CIDR, SVC_CIDR, CP_IP, PROXY_MODE, KNET_IMAGE (empty: build it here).
set -euo pipefail
# Vagrant uploads this file alone to /tmp: the helpers are read from the synced repository.
: "${POD_CIDR:?}" "${SVC_CIDR:?}" "${CP_IP:?}" "${PROXY_MODE:?}"
KNET_IMAGE=${KNET_IMAGE:-}
share=/vagrant/.knet            # synced folder: the workers read the join command and image here
mkdir -p "$share"
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f /etc/kubernetes/admin.conf ]; then
  kubeadm init --apiserver-advertise-address "$CP_IP" --pod-network-cidr "$POD_CIDR" \
    --service-cidr "$SVC_CIDR" --skip-phases=addon/kube-proxy,addon/coredns
fi
mkdir -p /root/.kube /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant: /home/vagrant/.kube
cp /etc/kubernetes/admin.conf "$share/admin.conf"
kubeadm token create --print-join-command >"$share/join.sh"

/vagrant/vagrant/scripts/image.sh "$share"

overlay=/vagrant/.knet/overlay
/vagrant/vagrant/scripts/render-overlay.sh "$overlay" "$PROXY_MODE" "$CP_IP" eth1 "${KNET_IMAGE:-localhost/knet:0.1.0}"
kubectl apply -k "$overlay"
kubectl -n knet-system rollout status ds/knet-node --timeout=300s
kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=300s
echo "control-plane: knet applied (proxy mode $PROXY_MODE)"
