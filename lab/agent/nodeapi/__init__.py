"""The node agent's API (the kubelet's :10250): exec, attach, port-forward, container logs,
stats and metrics for the pods of its node. Map: `server.py` (routes, TLS, upgrades), `http1.py`
(request heads), `conns.py` (WebSocket and SPDY sessions), `remotecommand.py` (exec/attach),
`portforward.py`, `logs.py` (CRI log files)."""
