"""The kinds' strategies (`lab.apiserver.strategy.Strategy`), grouped as kube-apiserver's
`pkg/registry/<group>/<kind>`: pods, workloads, services (+ endpoints), cluster (namespaces,
nodes, events), config (secrets, configmaps), networking. `lab.apiserver.resources` serves them."""
