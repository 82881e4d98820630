#!/usr/bin/env bash
# Worker: the knet image, then kubeadm join with the command the control plane left behind.
set -euo pipefail
# Vagrant uploads this file alone to /tmp: the helpers are read from the synced repository.
share=/vagrant/.knet
for _ in $(seq 1 120); do
  [ -s "$share/join.sh" ] && break
  sleep 5
done
[ -s "$share/join.sh" ] || { echo "worker: no $share/join.sh from the control plane" >&2; exit 1; }
/vagrant/vagrant/scripts/image.sh "$share"
if [ ! -f /etc/kubernetes/kubelet.conf ]; then
  bash "$share/join.sh"
fi
echo "worker: $(hostname) joined"
