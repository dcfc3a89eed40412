"""Kubernetes API access: `client.KubeClient` (pods, NADs, nodes, custom objects) and the typed
errors of `errors`. Nothing is imported here: `import multiplex.k8s` stays free, and the
`kubernetes` library is loaded only when a KubeClient makes its first call."""
