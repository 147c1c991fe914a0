#!/usr/bin/env bash
# Set up .venv with the test requirements (first time only), make sure Debian's Chromium is there for the
# browser tests, and run the whole test suite. Extra arguments go to pytest.
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
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian's ${missing[*]} for the tests"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
