#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, brings up the virtual lab and runs the nightly playbook on it.
# Prints where the report is. Exit status is the orchestrator's (0 pass, 1 fail, 2 bad input, 3 infra).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/orchestrator run playbooks/nightly.yaml "$@"
