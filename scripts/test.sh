#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs the whole test suite: unit tests, then the
# end-to-end tests on the virtual lab (QEMU machines with their own BMCs, TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
