#!/usr/bin/env bash
# The README's second command: install what the tests need, then run them all: the main suite
# (unit, netns, kubernetes, interop, perf — as root nothing is skipped), then the VM tier
# (tests that need a kernel feature this machine lacks, e.g. ipvlan) in one QEMU boot.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test || { echo "setup failed"; exit 1; }

start=$(date +%s)
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
main_rc=$?
echo "main suite: exit $main_rc, $(( $(date +%s) - start )) s"

vm_rc=0
if [ -z "${MULTIPLEX_SKIP_VM_TIER:-}" ] && [ -f tests/vm/run.py ]; then
  vm_start=$(date +%s)
  .venv/bin/python tests/vm/run.py
  vm_rc=$?
  echo "VM tier: exit $vm_rc, $(( $(date +%s) - vm_start )) s"
fi
[ "$main_rc" -eq 0 ] && [ "$vm_rc" -eq 0 ]
