"""The one-machine lab: nodes, pods and clients as network namespaces, the small Kubernetes that
drives them, and the launchers. Map: README.md; public entry points: `lab.api`, `lab.cli`,
`lab.errors`."""
