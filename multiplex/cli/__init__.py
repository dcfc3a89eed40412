"""The command line: `multiplex` run by a person rather than by a runtime.

`commands` holds the click group `cli` and every command; each is thin and calls one of
`install` (the package: install/uninstall on a node), `ipam` (show, check, gc of the shared IPAM),
`lab` (the demo lab), `validate` (checking NADs and configs offline) or `tools` (STATUS/GC by
hand) to do the work. Nothing is imported here."""
