#!/usr/bin/env bash
# The README's main job: set up (if needed), then fixed grid vs DART on cluttered digits (CPU).
# `bash scripts/demo.sh video [ARGS]` runs the video demo (uniform tokens vs DART, tiny VideoMamba)
# instead; other arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TIMM_FUSED_ATTN=0
if [[ "${1:-}" == "video" ]]; then
    shift
    python -m dart_video.demo "$@"
else
    python -m dart_core.demo "$@"
fi
