#!/usr/bin/env bash
# The README's main job: set up (if needed), then uniform tokens vs DART on moving digits (a tiny
# VideoMamba, CPU). `bash scripts/demo.sh image [ARGS]` runs the image demo (fixed grid vs DART on
# cluttered digits) instead (`video` names the default explicitly); other arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/setup.sh | tail -n 1)  # DART_STACK picks the stack, as for scripts/test.sh
. "$venv/bin/activate"
export TIMM_FUSED_ATTN=0
case "${1:-}" in
    image) shift; python -m dart_core.demo "$@" ;;
    video) shift; python -m dart_video.demo "$@" ;;
    *) python -m dart_video.demo "$@" ;;
esac
