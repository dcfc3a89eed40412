#!/usr/bin/env bash
# The README's first command: install what is needed, then run the lab (a node and three pods in
# network namespaces, attached through multiplex; prints interfaces, addresses and a ping matrix,
# then removes everything). Extra arguments go to `multiplex lab` (--keep, --down, --pods N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab
exec .venv/bin/multiplex lab "$@"
