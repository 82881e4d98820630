"""The kinds' strategies (`lab.apiserver.strategy.Strategy`), grouped as kube-apiserver's
`pkg/registry/<group>/<kind>`: pods, workloads, services (+ endpoints), cluster (namespaces,
nodes), events (core/v1 and events.k8s.io/v1), config (secrets, configmaps), networking.
`lab.apiserver.resources` serves them."""
