"""The one-machine lab: nodes, pods and clients as network namespaces."""
