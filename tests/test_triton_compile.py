"""The Triton kernels compile for real NVIDIA GPUs (sm_80, sm_90) through ``tools/compile_triton.py``.

The interpreter tests in test_kernels.py check the kernels' values but never lower them through
Triton's GPU compiler or ``ptxas``; here every variant the wrappers launch (each image dtype, a
power-of-two and a masked patch size, the backward with and without the image gradient) is
compiled to a cubin without a GPU, in a fresh Triton cache, and must not spill registers.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "compile_triton.py"
POINTER_TYPES = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16", "float64": "*fp64"}


def run_tool(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}  # compile for real, not from a cache
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    tmp_path = tmp_path_factory.mktemp("compile_triton")
    result = run_tool(tmp_path, "--arch", "80", "90", "--no-spills", "--json", str(tmp_path / "rows.json"))
    rows = json.loads((tmp_path / "rows.json").read_text()) if (tmp_path / "rows.json").exists() else []
    return result, rows


def triton_takes_constexprs() -> bool:
    """The compile API the tool needs (Triton 3.6 and 3.8 have it; 3.1, torch 2.5's, does not)."""
    from triton.compiler import ASTSource

    return "constexprs" in inspect.signature(ASTSource.__init__).parameters


def test_every_launched_variant_compiles_for_sm80_and_sm90_without_spills(compiled):
    result, rows = compiled
    if not triton_takes_constexprs():  # the oldest supported stack: the tool refuses, saying why
        assert result.returncode == 2 and "too old for this tool" in result.stderr and not rows
        return
    assert result.returncode == 0, result.stdout + result.stderr
    failed = [row for row in rows if "error" in row]
    assert not failed, failed
    covered = {
        (row["kernel"], row["arch"], row["signature"]["image_ptr"], row["constexprs"]["LINES"],
         row["constexprs"].get("IMAGE_GRAD"))
        for row in rows
    }
    expected = {
        (kernel, arch, pointer, lines, grad)
        for arch in (80, 90) for pointer in POINTER_TYPES.values() for lines in (16, 14)
        for kernel, grad in (("_patch_forward_kernel", None), ("_patch_backward_kernel", False),
                             ("_patch_backward_kernel", True))
    }
    assert covered == expected
    for row in rows:
        assert row["cubin_bytes"] > 0
        assert row["LOCAL"] == 0, f"{row['kernel']} spills {row['LOCAL']} bytes on sm_{row['arch']}"
        assert 0 < row["REG"] <= 255
        assert row["constexprs"]["BLOCK"] == 16  # the next power of two of both patch sizes
        # the forward writes each value once; the backward accumulates shared lines with relaxed
        # float atomics in the weights' dtype (never Triton's fenced acq_rel default), as atom.add
        # or, from Triton 3.9 on, as red.add (its result is unused)
        if row["kernel"] == "_patch_forward_kernel":
            assert row["atomics"] == []
        else:
            width = "f64" if row["signature"]["image_ptr"] == "*fp64" else "f32"
            assert row["atomics"] in [[f"{op}.global.gpu.relaxed.add.{width}"] for op in ("atom", "red")]


def test_recorded_signatures_follow_the_wrappers_dtypes(compiled):
    """Images and patch gradients keep their dtype; interpolation weights are float32 except for
    float64 images; the taps are int64 (the contract of patch_function.compute_dtype)."""
    result, rows = compiled
    if not triton_takes_constexprs():  # refused before recording (see the test above)
        assert result.returncode == 2 and not rows
        return
    assert rows
    for row in rows:
        signature = row["signature"]
        weights = "*fp64" if signature["image_ptr"] == "*fp64" else "*fp32"
        assert signature["line_frac_ptr"] == signature["sample_frac_ptr"] == weights
        assert signature["top_ptr"] == signature["left_ptr"] == "*i64"
        if row["kernel"] == "_patch_backward_kernel":
            assert signature["grad_ptr"] == signature["image_ptr"]
            # the image gradient accumulates in the weights' dtype (atomics) and is cast afterwards
            assert signature["grad_line_ptr"] == signature["grad_sample_ptr"] == signature["grad_image_ptr"] == weights
        else:
            assert signature["out_ptr"] == signature["image_ptr"]


def test_an_unsupported_architecture_is_refused_with_the_reason(tmp_path):
    result = run_tool(tmp_path, "--arch", "35")
    assert result.returncode == 2
    assert "sm_35 is older than sm_70" in result.stderr
    result = run_tool(tmp_path, "--arch", "hopper")
    assert result.returncode == 2 and "not a compute capability" in result.stderr
