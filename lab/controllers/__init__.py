"""The lab's cluster behaviour as controllers (`knet-controllers`, lab.controllers.main):
scheduler, ReplicaSet/ReplicationController, Deployment, StatefulSet, EndpointSlice (+ Endpoints),
LoadBalancer, garbage collection. Clients of the API server like kube-controller-manager; the
pure decisions live in functions beside each controller and are unit-tested on their own; the
objects a change concerns are found through informer indexes (`indexes.py`), never by reading a
whole cache (tests/unit/test_controllers_scans.py)."""
