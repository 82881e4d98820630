"""kdns: cluster DNS per the Kubernetes DNS-based service discovery specification, configured and
observed like CoreDNS (Corefile subset, CoreDNS's metric names).

    records.py   Services / EndpointSlices / Pods -> records; the merged record store (pure)
    answer.py    question + store -> reply: NXDOMAIN vs NODATA, SOA, SRV glue, CNAME chains (pure)
    wire.py      DNS wire format: strict query parsing, response building, truncation
    message.py   upstream replies as bytes: scan once, patch a copy per client
    cache.py     the answer cache of the UDP fast path, invalidated by changed names
    fcache.py    the forward cache (CoreDNS's cache: success/denial, prefetch, serve_stale)
    forward.py   upstream groups and the relay (policies, health checks, max_concurrent, TCP on TC)
    autopath.py  pods' addresses and search paths (autopath @kubernetes)
    corefile.py  Corefile syntax (pure);  config.py: its plugins (or the flags) -> settings
    blocks.py    server blocks at run time: routing a name to its block and forward
    engine.py    the thread (or event loop) that owns the UDP sockets
    server.py    listeners, fast path, slow path, TCP;  request.py: what they pass around
    relaying.py  the server's forwarding: cache, relay, client copies, the short path
    walking.py   the server's autopath walk
    metrics.py   CoreDNS's metrics as a prometheus_client collector;  endpoints.py: HTTP
    daemon.py    the `kdns` command: informers -> store -> server; reload
"""
