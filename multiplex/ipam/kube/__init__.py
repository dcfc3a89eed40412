"""The Kubernetes lease store: block IPAM on the IPPool and IPBlock custom resources.

model.py: the objects and their (de)serialising; blocks.py: block arithmetic (carving a pool into
blocks, free addresses in a block); store.py: `KubeStore`, the store against the API. Imported
only when a config's `store` is "kubernetes" (see `multiplex.ipam.registry.STORES`); nothing is
imported here."""
