#!/usr/bin/env bash
# The README's test command: set up (if needed) and run the whole suite on the CPU, on the stack
# DART_STACK names (default cpu; see scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/setup.sh | tail -n 1)
. "$venv/bin/activate"
export TRITON_INTERPRET=1 TIMM_FUSED_ATTN=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest "$@"
