"""`knet-node-agent` (lab.agent.main): the kubelet's network part for the lab. Pure parts:
images (what a container runs), podenv (environment, resolv.conf, hosts), probes (Tracker),
status (pod status); the rest runs pods: runtime (sandboxes via lab.net.pods), containers
(processes), podworker (one thread per pod)."""
