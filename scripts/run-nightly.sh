#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, brings up the virtual lab and runs the nightly playbook on it.
# Prints where the report is. Exit status is the orchestrator's (0 pass, 1 fail, 2 bad input,
# 3 infrastructure error or a host left armed, 4 no case reached a verdict).
# The lab stays up afterwards (a second run starts at once); the last lines say how to stop it.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 3
.venv/bin/orchestrator run playbooks/nightly.yaml "$@"
status=$?
if [ -n "$(.venv/bin/orchestrator lab status 2>/dev/null | grep -v 'lab is down')" ]; then
  echo "The virtual lab is still up (QEMU machines and their BMCs), ready for the next run."
  echo "Stop it with: .venv/bin/orchestrator lab down"
fi
exit "$status"
