"""The NetworkPolicy reachability matrix: oracle, scenarios, probes and the lab testbed (see
`knet_testing`'s map)."""
