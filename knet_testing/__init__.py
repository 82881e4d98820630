"""Test support: harnesses, fixtures and oracles used by `tests/` and `bench/`, never by product code.

    netpolicy/   the reachability matrix: `reference` (an independent NetworkPolicy evaluator, the
                 tests' oracle), `matrix` (topology + expected table), `scenarios` and `randomized`
                 (policies to check), `probe` (servers and parallel probes in pod namespaces),
                 `testbed` (the matrix lab, a loopback control plane, a netpolicy daemon)
    flannel      a mini cluster of namespaces for flannel_py alone (no lab)
    kdns         Kubernetes object builders and a fake upstream DNS server
    ingress      builders for the objects an ingress controller reads

May import anything (components, the lab); nothing outside tests/ and bench/ imports it (the
layering contract in pyproject.toml checks that).
"""
