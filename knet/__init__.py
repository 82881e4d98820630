"""knet: Kubernetes pod networking and service proxying in Python (shared layer)."""

__version__ = "0.1.0"
