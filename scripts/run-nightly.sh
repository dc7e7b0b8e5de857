#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, brings up the virtual lab (a mixed one: an x86_64 and an
# aarch64 machine) and runs the nightly playbook on it, both arches in parallel.
# Prints where the report is. Exit status is the orchestrator's (0 pass, 1 fail, 2 bad input,
# 3 infrastructure error or a host left armed, 4 no case reached a verdict).
# The lab stays up afterwards (a second run starts at once); the last lines say how to stop it.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 3
# Both arches for little more than one: the nightly took 118-141 s on a mixed lab vs 101-114 s
# on one x86_64 machine (2 cores, TCG; the two guests run in parallel); 308 vs 208 s with
# other labs loading the machine (load average 8-59). A lab already up is used as it
# is; with -i the run is on that inventory and no lab is started.
case " $* " in
  *" -i "*|*" --inventory "*|*" --inventory="*) ;;
  *) if .venv/bin/orchestrator lab status 2>/dev/null | grep -q 'lab is down'; then
       .venv/bin/orchestrator lab up --arch x86_64,aarch64 || exit $?
     fi ;;
esac
.venv/bin/orchestrator run playbooks/nightly.yaml "$@"
status=$?
if [ -n "$(.venv/bin/orchestrator lab status 2>/dev/null | grep -v 'lab is down')" ]; then
  echo "The virtual lab is still up (QEMU machines and their BMCs), ready for the next run."
  echo "Stop it with: .venv/bin/orchestrator lab down"
fi
exit "$status"
