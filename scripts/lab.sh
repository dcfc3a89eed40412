#!/usr/bin/env bash
# The README's first command: install what is needed, then run the lab: three nodes (network
# namespaces on a shared underlay bridge), a multiplex node daemon on each, and three pods per node
# attached through the daemons; prints the nodes, the pods' interfaces and addresses and ping
# matrices, then removes everything. Extra arguments go to `multiplex lab`
# (--nodes N, --pods N per node, --keep, --down).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab
exec .venv/bin/multiplex lab "$@"
