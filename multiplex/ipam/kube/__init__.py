"""The Kubernetes lease store (`store.KubeStore`): block IPAM on the IPPool and IPBlock custom
resources. Imported only when a config's `store` is "kubernetes" (see
`multiplex.ipam.store.STORES`); nothing is imported here."""
