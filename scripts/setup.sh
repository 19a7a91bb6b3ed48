#!/usr/bin/env bash
# Create .venv and install every package of the monorepo with the pinned CPU stack.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints/cpu.txt -r constraints/dev.txt
