"""The command line: `multiplex` run by a person rather than by a runtime.

`commands` holds the click group `cli` and every command; each is thin and calls one of
`install` (install/uninstall on a node), `lab` (the demo lab), `validate` (checking NADs and
configs offline) or `tools` (STATUS/GC by hand) to do the work. Nothing is imported here."""
