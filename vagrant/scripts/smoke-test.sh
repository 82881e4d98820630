#!/usr/bin/env bash
# Smoke test, run once every node has joined: every node Ready, knet's pods ready, then a pod on
# the first worker reaches a pod on the second worker directly, through a ClusterIP Service and by
# the Service's DNS name (kdns), and a NodePort from outside the pod network.
set -euo pipefail
export KUBECONFIG=/vagrant/.knet/admin.conf
: "${WORKERS:?}"
if [ "$WORKERS" -lt 2 ]; then echo "smoke: needs two workers, skipped"; exit 0; fi

kubectl wait --for=condition=Ready nodes --all --timeout=600s
kubectl -n knet-system rollout status ds/knet-node --timeout=600s
kubectl -n knet-system rollout status deploy/kdns --timeout=600s

kubectl delete namespace knet-smoke --ignore-not-found --wait=true
kubectl create namespace knet-smoke
for i in 1 2; do
  cat <<YAML | kubectl apply -f -
apiVersion: v1
kind: Pod
metadata: {name: web$i, namespace: knet-smoke, labels: {app: web, idx: "w$i"}}
spec:
  nodeName: worker$i
  containers:
    - name: web
      image: busybox:1.36
      command: [sh, -c, 'mkdir -p /www && hostname >/www/index.html && exec httpd -f -p 8080 -h /www']
      readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
YAML
done
cat <<YAML | kubectl apply -f -
apiVersion: v1
kind: Service
metadata: {name: web, namespace: knet-smoke}
spec:
  type: NodePort
  selector: {app: web, idx: w2}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
YAML
kubectl -n knet-smoke wait --for=condition=Ready pod/web1 pod/web2 --timeout=300s

ip2=$(kubectl -n knet-smoke get pod web2 -o jsonpath='{.status.podIP}')
svc=$(kubectl -n knet-smoke get svc web -o jsonpath='{.spec.clusterIP}')
fetch() {  # fetch URL: web1 (worker1) fetches it; must answer web2's hostname
  local got
  for _ in $(seq 1 30); do
    got=$(kubectl -n knet-smoke exec web1 -- wget -qO- -T 3 "$1" 2>/dev/null || true)
    if [ "$got" = "web2" ]; then echo "smoke: ok  $1"; return 0; fi
    sleep 2
  done
  echo "smoke: FAIL $1 (got '${got:-nothing}')" >&2
  return 1
}
fetch "http://$ip2:8080/"                                # pod to pod across nodes (overlay)
fetch "http://$svc/"                                     # ClusterIP (kproxy)
fetch "http://web.knet-smoke.svc.cluster.local/"         # DNS (kdns) + ClusterIP
# NodePort from outside the pod network: this VM is on the nodes' LAN.
for _ in $(seq 1 30); do
  if [ "$(wget -qO- -T 3 http://192.168.33.11:30080/ 2>/dev/null || true)" = "web2" ]; then
    echo "smoke: ok  NodePort 192.168.33.11:30080"
    kubectl delete namespace knet-smoke --wait=false
    echo "smoke: passed"
    exit 0
  fi
  sleep 2
done
echo "smoke: FAIL NodePort 192.168.33.11:30080" >&2
exit 1
