#!/usr/bin/env bash
# The README's first command: install what is needed, then run the lab (a node and three pods in
# network namespaces, attached through multiplex; prints interfaces, addresses and a ping matrix,
# then removes everything). Extra arguments go to `multiplex lab` (--keep, --down, --pods N).
set -euo pipefail
cd "$(dirname "$0")/.."
MULTIPLEX_EXTRAS=${MULTIPLEX_EXTRAS:-k8s} bash scripts/setup.sh
exec .venv/bin/multiplex lab "$@"
