"""The `multiplex` command: a CNI plugin when the runtime calls it, a CLI otherwise.

Start-up cost is the enemy of a per-call plugin, so this module imports nothing heavy: VERSION
answers from the stdlib, CNI commands import only the orchestrator's path, and the click CLI is
imported only when there is no CNI_COMMAND.
"""
from __future__ import annotations

import os
import sys


def main() -> None:
    command = os.environ.get("CNI_COMMAND")
    if command == "VERSION":
        import json

        from .cni.version import version_info

        sys.stdout.write(json.dumps(version_info()))
        sys.exit(0)
    # A runtime always sets CNI_COMMAND; CNI_* variables without it (and no CLI arguments) are a
    # runtime's broken call, answered with a CNI error (code 4), not with the CLI's usage text.
    # Shell completion also calls us with no arguments (click reads _MULTIPLEX_COMPLETE): that is
    # the CLI, even from a shell that exports CNI_PATH.
    runtime_call = (len(sys.argv) == 1 and "_MULTIPLEX_COMPLETE" not in os.environ
                    and any(k.startswith("CNI_") for k in os.environ))
    if command or runtime_call:
        from .cni.skel import main as cni_main
        from .meta.orchestrator import plugin

        cni_main(plugin)
        return
    from .cli.commands import cli

    cli()


if __name__ == "__main__":
    main()
