#!/usr/bin/env bash
# Writes a kustomize overlay of deploy/ with the lab's settings into OUT_DIR.
# Usage: render-overlay.sh OUT_DIR PROXY_MODE CP_IP IFACE IMAGE   (CP_IP: unused since flannel-py
# no longer needs the control plane's etcd; kept so callers need no change)
set -euo pipefail
out=${1:?out dir}; mode=${2:?proxy mode}; : "${3:?control plane ip}"; iface=${4:?iface}; image=${5:?image}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
base=$(realpath --relative-to="$out" "$repo/deploy")
name=${image%:*}
tag=${image##*:}
if [ "$name" = "$image" ]; then tag=latest; fi
cat >"$out/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
configMapGenerator:
  - name: knet-config
    namespace: knet-system
    behavior: merge
    literals:
      - proxy-mode=$mode
      - iface=$iface
      - external-iface=$iface
generatorOptions:
  disableNameSuffixHash: true
images:
  - name: localhost/knet
    newName: $name
    newTag: "$tag"
YAML
echo "overlay: $out/kustomization.yaml"
