#!/usr/bin/env bash
# Create .venv in the repository root and install Layercake into it. Safe to run again: it only installs
# when the requirements changed. Usage: scripts/setup.sh [requirements file, default requirements.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
req=${1:-requirements.txt}
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version 2>&1)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
  echo "installing $req into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  # rembg's first import compiles pymatting's numba functions (80-90 s) and caches them in site-packages:
  # pay that once here rather than in the first request or test.
  .venv/bin/python -c "import rembg"
  touch "$stamp"
fi
