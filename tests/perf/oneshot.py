"""One exec'd CNI call of the multiplex meta plugin that times itself, for the start-up split.

    CNI_COMMAND=ADD ... python tests/perf/oneshot.py < config

Does what the `multiplex` entrypoint does for a CNI command, with clocks around the two parts a
process pays before and during its one call, and writes them as the last line of stderr:
`{"imports": s, "call": s}`: `imports` is the entry path (multiplex.cni.skel, multiplex.meta.orchestrator),
`call` the call itself, including what it imports lazily (pyroute2, jsonschema, delegates, IPAM)
and first-use work (schemas loaded, validators built, entry points read). The caller's wall clock
minus both is the interpreter's own start and exit.
"""
import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from multiplex.cni.skel import run  # noqa: E402
from multiplex.meta.orchestrator import plugin  # noqa: E402

T1 = time.perf_counter()
code = run(plugin, os.environ, sys.stdin.buffer.read(), sys.stdout)
T2 = time.perf_counter()
sys.stdout.flush()
sys.stderr.write("\n" + json.dumps({"imports": T1 - T0, "call": T2 - T1}) + "\n")
sys.exit(code)
