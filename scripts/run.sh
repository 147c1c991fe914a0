#!/usr/bin/env bash
# Set up .venv (first time only) and launch the Layercake studio. Extra arguments go to app.py,
# e.g. scripts/run.sh --backend draft --port 7860 --share
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
