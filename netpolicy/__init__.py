"""netpolicy: networking.k8s.io/v1 NetworkPolicy enforcement for the pods of one node.

    objects (informer cache) --compiler--> Compiled (per pod: isolation, allowed peers x ports)
              --nft.build--> Ruleset (content-addressed sets/chains, dispatch maps)
              --NftBackend--> one atomic `nft -f` transaction per update (diff of old and new Ruleset)

Modules: `compiler` (pure), `model` (compiled data + evaluation used by `explain`), `nft` (pure
rendering, diffing and an in-Python simulation of the ruleset), `backend` (the kernel side),
`daemon`, `explain`. The tests' oracle (`reference`, an independent evaluator written from the
API documentation) and the reachability-matrix harness live in `knet_testing.netpolicy`.
"""
