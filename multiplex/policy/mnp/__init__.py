"""MultiNetworkPolicy enforcement in nftables, inside each pod's netns (docs/policy.md).

    model.py     MultiNetworkPolicy v1beta1 (NetworkPolicy's spec + policy-for) and label selectors
    compiler.py  one pod's policies -> one nft table: rules per interface, peers in named sets
    apply.py     one atomic `nft -f` per change in the pod's netns: a set update or a full replace
    engine.py    the node's local pods (the result cache), the view, passes, status files
    hooks.py     the meta plugin's enforce step: rules in place before ADD returns, gone with
                 DEL, verified by CHECK
    matrix.py    TCP listeners and probes in pods' netns (the lab's allowed/denied matrix)

The daemon's controller (multiplex/controllers/policy.py) watches the policies, every pod and the
namespaces and runs the engine's passes; `multiplex policy show` is multiplex/cli/policy.py.
"""
