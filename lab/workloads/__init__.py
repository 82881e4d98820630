"""Built-in stand-ins for container images the lab cannot pull (see `lab.agent.images`):

    python -m lab.workloads netexec --http-port=8080 --udp-port=8081   # agnhost netexec
    python -m lab.workloads serve-hostname --port=9376                  # agnhost serve-hostname
    python -m lab.workloads http --port 80 --version 0.1                # nginx / node-js / ... images
    python -m lab.workloads pause                                       # agnhost pause

Standard library only, so a pod's process starts in ~30 ms. The pod's name comes from
$HOSTNAME (the node agent sets it, as a container runtime does).
"""
