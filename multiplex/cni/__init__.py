"""The CNI protocol: requests, results, errors, versions, plugin dispatch and exec, the cache."""
