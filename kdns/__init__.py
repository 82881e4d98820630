"""kdns: cluster DNS per the Kubernetes DNS-based service discovery specification.

    records.py  Services / EndpointSlices / Pods -> records; the merged record store (pure)
    answer.py   question + store -> reply: NXDOMAIN vs NODATA, SOA, SRV glue, CNAME chains (pure)
    wire.py     DNS wire format: strict query parsing, response building, truncation
    cache.py    the answer cache of the UDP fast path, invalidated by changed names
    forward.py  upstream forwarding with a TTL-honouring cache
    server.py   UDP (fast path + slow path) and TCP listeners on asyncio
    metrics.py  query/latency/cache metrics through knet.metrics
    daemon.py   the `kdns` command: informers -> store -> server
"""
