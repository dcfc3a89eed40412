#!/usr/bin/env bash
# The README's first command: install what is needed (bird2 among it), then run the lab: three
# nodes (network namespaces on a shared underlay bridge), a multiplex node daemon on each (with
# its BIRD), three pods per node attached through the daemons: eth0 bgp-routed and net1
# vxlan-overlay across the nodes, bridges per node; prints the nodes, BGP sessions, the pods'
# interfaces, addresses and MTUs, a ping matrix per network and a MultiNetworkPolicy's
# allowed/denied matrix, then removes everything. Extra arguments go to `multiplex lab`
# (--nodes N, --pods N per node, --keep, --down).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab
exec .venv/bin/multiplex lab "$@"
