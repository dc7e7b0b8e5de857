#!/usr/bin/env bash
# Installs everything the orchestrator and its tests need on a fresh Debian 12 machine (as root):
# Debian packages (QEMU, ipmitool, ssh tools, image-building tools) and a Python venv in .venv.
# Idempotent: a second run installs nothing and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86 qemu-system-arm qemu-utils   # the virtual lab's machines (x86_64 and aarch64, TCG)
  ipmitool                                      # a BMC client nobody here wrote, for the lab's tests
  openssh-client openssh-server                 # ssh-keygen/ssh for the lab; sshd for transport tests
  cpio kmod xz-utils zstd e2fsprogs binutils file   # guest image building (initramfs, modules, disk)
  python3-venv python3-dev gcc                  # the controller's venv
  postgresql                                    # the engine's queue; its tests start a private cluster
  ca-certificates debian-archive-keyring        # the image builder's private apt configuration
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import orchestrator, pyghmi, fabric, pytest, procrastinate' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: creating the Python environment in .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -i '^WARNING' || true
  touch .venv/.installed
fi
.venv/bin/python -c 'import orchestrator, pyghmi, fabric, tenacity, rich, yaml, pytest, procrastinate, psycopg' \
  || { echo "setup: the Python environment is broken" >&2; exit 1; }
