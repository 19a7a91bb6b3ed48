#!/usr/bin/env bash
# The README's main job: set up (if needed), then fixed grid vs DART on cluttered digits (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TIMM_FUSED_ATTN=0
python -m dart_core.demo "$@"
