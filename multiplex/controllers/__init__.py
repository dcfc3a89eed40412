"""The node daemon's controllers (multiplex/daemon/controller.py is the framework):

- node_registry: publishes this node's facts (underlay address per family, underlay MTU, and what
  delegates register) on its Node object, and keeps a view of every node's facts;
- ipam_gc: the cluster IPAM's garbage collection (`multiplex ipam gc --every`), folded in.

Each is found through the `multiplex.controllers` entry points (pyproject.toml): a factory
`controller(daemon) -> Controller | None` (None: the controller does not apply to this daemon,
e.g. IPAM GC without a cluster).
"""
