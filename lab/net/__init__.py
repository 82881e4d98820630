"""The network lab: nodes, pods and clients as network namespaces (see README.md, its map)."""
