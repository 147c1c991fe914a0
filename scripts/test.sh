#!/usr/bin/env bash
# Set up .venv with the test requirements (first time only), make sure the programs the tests open our files
# with are there (Debian's Chromium, ImageMagick, Krita, Blender; npm's glTF validator and three.js), and run
# the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
# Programs the tests open our files with: Chromium (the studio), ImageMagick (PSD), Krita on a virtual
# screen (OpenRaster). Debian's packages; installed only when missing.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v identify >/dev/null || missing+=(imagemagick)
command -v krita >/dev/null || missing+=(krita)
command -v xvfb-run >/dev/null || missing+=(xvfb xauth)
# Blender opens stack.glb; its glTF importer needs numpy, which --no-install-recommends would skip.
command -v blender >/dev/null || missing+=(blender python3-numpy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian's ${missing[*]} for the tests"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Khronos' glTF validator and three.js, pinned in tests/js/package-lock.json, from the npm registry.
if [ ! -d tests/js/node_modules/gltf-validator ] || [ ! -d tests/js/node_modules/three ]; then
  echo "installing the npm packages the tests use (tests/js)"
  npm ci --prefix tests/js --no-audit --no-fund >/dev/null
fi
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
