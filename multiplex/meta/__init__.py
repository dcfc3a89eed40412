"""The meta plugin: what the runtime calls as type "multiplex".

`orchestrator` (ADD/DEL/CHECK/STATUS/GC with rollback), `selection` (which networks a pod gets:
the annotation, NADs, the default network, isolation), `annotation` (the networks annotation's
parser), `sources` (where NADs and pods are read from), `config` (the plugin's own config),
`default_route` (moving the pod's default route) and `netstatus` (the network-status annotation).
Delegates are found through the entry-point registry, never imported here. Nothing is imported
in this file: a CNI call pays only for the modules it uses."""
