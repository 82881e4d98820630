#!/usr/bin/env bash
# Control plane: kubeadm init with knet's CIDRs and without kube-proxy and CoreDNS (kproxy and
# kdns replace them), the knet image, the etcd client certificate for flannel-py, deploy/.
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

# flannel-py keeps its leases in kubeadm's etcd: a client certificate of its own, signed by the
# etcd CA (etcd trusts any certificate that CA signed; the apiserver's own client cert stays put).
pki=/etc/kubernetes/pki/etcd
if [ ! -f "$pki/knet-client.crt" ]; then
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=knet-flannel" \
    -keyout "$pki/knet-client.key" -out "$pki/knet-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/knet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "$pki/knet-client.crt" 2>/dev/null
fi

overlay=/vagrant/.knet/overlay
/vagrant/vagrant/scripts/render-overlay.sh "$overlay" "$PROXY_MODE" "$CP_IP" eth1 "${KNET_IMAGE:-localhost/knet:0.1.0}"
kubectl apply -f /vagrant/deploy/namespace.yaml
kubectl -n knet-system create secret generic knet-etcd --from-file=ca.crt="$pki/ca.crt" \
  --from-file=tls.crt="$pki/knet-client.crt" --from-file=tls.key="$pki/knet-client.key" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -k "$overlay"
kubectl -n knet-system rollout status ds/knet-node --timeout=300s
kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=300s
echo "control-plane: knet applied (proxy mode $PROXY_MODE)"
