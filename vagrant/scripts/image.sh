#!/usr/bin/env bash
# Makes the knet image available to this node's containerd. Without KNET_IMAGE (a registry
# reference the nodes pull), the first node to get here builds Containerfile with podman and leaves
# an archive in the shared folder; every node imports it into containerd's k8s.io namespace.
# Usage: image.sh SHARE_DIR
set -euo pipefail
share=${1:?share dir}
if [ -n "${KNET_IMAGE:-}" ]; then
  echo "image: nodes pull $KNET_IMAGE"
  exit 0
fi
archive="$share/knet-image.tar"
if [ ! -f "$archive" ]; then
  podman build -t localhost/knet:0.1.0 -f /vagrant/Containerfile /vagrant
  podman save -o "$archive.tmp" localhost/knet:0.1.0
  mv "$archive.tmp" "$archive"
fi
ctr -n k8s.io images import "$archive"
