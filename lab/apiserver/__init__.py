"""The lab's Kubernetes API server: the REST API that `kubectl` and the `kubernetes` client speak,
stored in etcd the way kube-apiserver stores it (`/registry/<resource>/<namespace>/<name>`, etcd
revisions as resourceVersions).

Modules, from the wire inward:
    main.py       CLI (`knet-apiserver`), listeners (also in other network namespaces), start_in_lab()
    http.py       aiohttp application: auth, routing of API paths, watch streaming, Status errors
    discovery.py  /api, /apis, /version, /openapi/v2 documents
    tables.py     meta.k8s.io/v1 Table rendering for `kubectl get`
    registry.py   verbs (get/list/watch/create/update/patch/delete) over storage + admission
    mirror.py     Endpoints -> EndpointSlice mirroring for selector-less Services
    admission.py  defaults and validation (pure); allocator.py: ClusterIP / nodePort choice (pure)
    patch.py      merge, strategic-merge and JSON patch (pure)
    storage.py    etcd access (etcd3gw for unary calls, an async stream for watches)
    resources.py  the kinds served: group, version, plural, scope, short names, subresources
    errors.py     ApiError -> metav1.Status
    auth.py       bearer tokens file, kubeconfigs

Label and field selectors (parsing, matching, the 400 messages) are knet.kube.selectors, the one
implementation every component shares.

Controllers (scheduler, ReplicaSet/Deployment, EndpointSlice, LoadBalancer) are not part of the
server: they are clients of it, like kube-controller-manager. Only what must be synchronous with a
request lives here (admission, allocation, mirroring of hand-written Endpoints, cascading deletion).
"""
