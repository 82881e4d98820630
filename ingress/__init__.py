"""knet-ingress: an L7 ingress controller for networking.k8s.io/v1 Ingress, driving nginx.

    Ingress, IngressClass, Service, EndpointSlice, Secret (informers)
      -> ingress.compiler.compile_table   (pure: the routing table, conflicts resolved)
      -> ingress.nginxconf.render         (pure: nginx.conf text)
      -> ingress.nginx.Nginx              (own master process; test, swap, SIGHUP, wait for it)
      -> ingress.accesslog                (JSON access log -> Prometheus metrics)

See ingress/README.md for the semantics (hosts, paths, conflicts, TLS) and the design notes.
"""
