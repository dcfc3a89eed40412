"""The node daemon: one long-running multiplex per node.

```
runtime ──exec──▶ shim (shim.py, written into the CNI bin dir by `multiplex install --daemon`;
                   stdlib only, python3 -I -S; falls back to the in-process path or fails with 11)
                   │ unix socket (0600, root): CNI env + stdin ─▶ stdout + exit code
                   ▼
   server.py     accepts calls, bounded queue + worker pool (past the bound: code 11 at once),
                 calls for one container serialized, a deadline per call; runs cni/skel.run with
                 the meta plugin, warm, with a CallContext whose `services` are the daemon's
   services.py   what the daemon lends each call (cni/context.py Services): the cached Source of
                 pods and NADs, per-plugin latency into the metrics
   metrics.py    prometheus-client metrics; /healthz, /readyz, /metrics on a loopback port
   controller.py the controller framework: reconcile loops over watched objects (event → key →
                 reconcile, periodic resync, backoff on error), found through the
                 `multiplex.controllers` entry points the way delegates are found through
                 `multiplex.plugins`
   main.py       `multiplex daemon`: builds the object source (Kubernetes informers or a local
                 directory), the services, the server and the controllers; SIGTERM drains
```
The controllers themselves live in multiplex/controllers/ (node registry, IPAM GC) and, for a
delegate's own controller, beside the delegate.
"""
