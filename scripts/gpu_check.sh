#!/usr/bin/env bash
# On a machine with a CUDA GPU: the sampler's tests with the Triton kernels compiled for the GPU
# (tests/test_kernels.py with TRITON_INTERPRET=0; the CPU backends run beside them as usual), then
# the tokenizer benchmark on the GPU at batch 32 and 128. Uses the Python on PATH (or $PYTHON)
# with torch, triton, timm, pytest and hypothesis installed, and a C compiler (cc or $CC, with
# OpenMP) for the CPU kernels the tests compare against; the packages are read from this checkout.
#   usage: bash scripts/gpu_check.sh [OUTDIR]   (default gpu_check/: the logs and bench_cuda_b{32,128}.json)
set -uo pipefail
out=$(realpath -m "${1:-gpu_check}")  # relative to where it is called from
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: $python's torch sees no CUDA GPU; on a CPU machine run bash scripts/test.sh" >&2
    exit 2
fi
mkdir -p "$out"
export PYTHONPATH="packages/dart-core/src:packages/dart-video/src:packages/dart-dense/src${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0 TIMM_FUSED_ATTN=0
"$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    | tee "$out/versions.txt"
"$python" -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee "$out/test_kernels.log"
tests=${PIPESTATUS[0]}
bench=0
for batch in 32 128; do  # the issue's setting, and a batch that fills more of a large GPU
    "$python" tools/bench_tokenizer.py --device cuda --batch "$batch" --json "$out/bench_cuda_b$batch.json" 2>&1 \
        | tee "$out/bench_cuda_b$batch.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || bench=1
done
echo "gpu_check: kernel tests exit $tests, benchmark exit $bench; results in $out/"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
