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
    if command:
        from .cni.skel import main as cni_main
        from .orchestrator import plugin

        cni_main(plugin)
        return
    from .cli import cli

    cli()


if __name__ == "__main__":
    main()
