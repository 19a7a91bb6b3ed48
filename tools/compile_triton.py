#!/usr/bin/env python
"""Compile DART's Triton kernels for NVIDIA GPUs ahead of time, on a machine without one.

The Triton kernels (``dart_core.kernels.patch_triton``) run on the CPU only under the Triton
interpreter, which checks their values but never lowers them through Triton's GPU compiler or
NVIDIA's ``ptxas``. This tool does that lowering for real GPU architectures without a GPU:

1. it calls the kernel wrappers on tiny CPU tensors of each image dtype with the launch replaced
   by a recorder, so the signature compiled is exactly what the wrappers pass (argument dtypes,
   constexprs: patch size, block, image gradient on or off);
2. it compiles each recorded launch with ``triton.compile`` for ``GPUTarget("cuda", arch, 32)``
   down to a cubin (``ptxas`` ships with Triton);
3. it reads each cubin's resource usage with the bundled ``cuobjdump``: registers per thread,
   spilled bytes (``LOCAL``), shared memory, stack.

    python tools/compile_triton.py                     # sm_80 and sm_90, a table
    python tools/compile_triton.py --arch 90 --json out.json

Exit status 1 when a variant fails to compile or (``--no-spills``) spills registers. Integer
arguments are compiled without the divisibility specialisation a real launch may add, so the
cubin is the most general one Triton would build for that signature.
"""

from __future__ import annotations

import os

# The kernels are decorated at import: they must be real JIT functions, not interpreted ones.
os.environ["TRITON_INTERPRET"] = "0"

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
import triton.backends.nvidia  # noqa: E402
from dart_core.kernels import patch_triton  # noqa: E402
from dart_core.kernels.patch_function import compute_dtype  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import mangle_type  # noqa: E402

IMAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}
PATCH_SIZES = (16, 14)  # the published patch and one whose block (16) needs masking
RESOURCES = ("REG", "STACK", "SHARED", "LOCAL")
OLDEST_ARCH = 70  # Volta; LLVM aborts the whole process on much older targets (sm_10: "Cannot select")


def record_launches(image_dtype: torch.dtype, patch_size: int) -> list[dict]:
    """The launches the wrappers make for one image dtype and patch size: forward, and backward
    with and without the image gradient. Each: {"kernel", "grid", "args", "constexprs"}."""
    batch, channels, rows, tokens = 1, 3, 2, 4
    side = 2 * patch_size
    dtype = compute_dtype(image_dtype)
    images = torch.zeros(batch, channels, side, side, dtype=image_dtype)
    line_top = torch.zeros(batch, rows, patch_size, dtype=torch.long)
    line_frac = torch.zeros(batch, rows, patch_size, dtype=dtype)
    sample_left = torch.zeros(batch, tokens * patch_size, dtype=torch.long)
    sample_frac = torch.zeros(batch, tokens * patch_size, dtype=dtype)
    grad = torch.zeros(batch, tokens, channels, patch_size, patch_size, dtype=image_dtype)
    launches: list[dict] = []

    def record(kernel, device, grid, args, constexprs):
        launches.append({"kernel": kernel, "grid": grid, "args": args, "constexprs": dict(constexprs)})

    real_launch = patch_triton._launch
    patch_triton._launch = record
    try:
        patch_triton.patch_sample_forward(images, line_top, line_frac, sample_left, sample_frac)
        for need_images in (False, True):
            patch_triton.patch_sample_backward(grad, images, line_top, line_frac, sample_left, sample_frac, need_images)
    finally:
        patch_triton._launch = real_launch
    return launches


def signature(launch: dict) -> dict[str, str]:
    """Triton's type string for each kernel parameter ("*fp32", "i32", "constexpr", ...)."""
    kernel = launch["kernel"]
    names = kernel.arg_names
    positional = dict(zip(names[: len(launch["args"])], launch["args"], strict=True))
    if len(positional) + len(launch["constexprs"]) != len(names):
        raise RuntimeError(f"{kernel.__name__}: the recorded launch does not cover its parameters {names}")
    return {name: "constexpr" if name in launch["constexprs"] else mangle_type(positional[name]) for name in names}


def resource_usage(cubin: bytes) -> dict[str, int]:
    """{"REG", "STACK", "SHARED", "LOCAL"} of the cubin's one function, from ``cuobjdump``."""
    tool = Path(triton.backends.nvidia.__file__).parent / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run([str(tool), "--dump-resource-usage", handle.name], capture_output=True, text=True,
                                check=True).stdout
    usage = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", report)}
    missing = [key for key in RESOURCES if key not in usage]
    if missing:
        raise RuntimeError(f"cuobjdump reported no {', '.join(missing)}:\n{report}")
    return usage


def compile_launch(launch: dict, arch: int) -> dict:
    """Compile one recorded launch for sm_<arch>; a result row (``error`` set when it failed)."""
    kernel = launch["kernel"]
    types = signature(launch)
    row = {
        "kernel": kernel.__name__, "arch": arch, "grid_rank": len(launch["grid"]),
        "signature": {name: kind for name, kind in types.items() if kind != "constexpr"},
        "constexprs": launch["constexprs"],
    }
    start = time.perf_counter()
    try:
        source = ASTSource(fn=kernel, signature=types, constexprs=launch["constexprs"])
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        row.update(resource_usage(compiled.asm["cubin"]))
        # PTX atomics: atom.* returns the old value, red.* (Triton 3.9+ when it is unused) does not
        row["atomics"] = sorted(set(re.findall(r"\b(?:atom|red)\.[\w.]+", compiled.asm["ptx"])))
        row["cubin_bytes"] = len(compiled.asm["cubin"])
        row["num_warps"] = compiled.metadata.num_warps
    except Exception as error:  # a failed variant is reported with the compiler's message, the rest still run
        row["error"] = f"{type(error).__name__}: {error}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def describe(row: dict) -> str:
    constexprs = ", ".join(f"{key}={value}" for key, value in row["constexprs"].items())
    head = f"{row['kernel']:<24} sm_{row['arch']:<3} {row['signature']['image_ptr']:<6} {constexprs:<38}"
    if "error" in row:
        return f"{head} FAILED: {row['error'].splitlines()[0]}"
    return (f"{head} {row['REG']:>4} regs  {row['LOCAL']:>4} B spilled  {row['SHARED']:>6} B shared  "
            f"{row['seconds']:>5.2f} s")


def architecture(text: str) -> int:
    """``--arch`` values: a compute capability × 10, sm_70 (V100) or newer."""
    try:
        arch = int(text.removeprefix("sm_"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a compute capability × 10 such as 90 (H100)") from None
    if arch < OLDEST_ARCH:
        raise argparse.ArgumentTypeError(f"sm_{arch} is older than sm_{OLDEST_ARCH} (V100), the oldest this tool targets")
    return arch


def takes_constexprs() -> bool:
    """Whether this Triton's ``ASTSource`` takes ``constexprs=`` (the compile API this tool uses)."""
    return "constexprs" in inspect.signature(ASTSource.__init__).parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=architecture, nargs="+", default=[80, 90],
                        help="compute capabilities × 10 to compile for (80: A100, 90: H100/H200)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(IMAGE_DTYPES), default=list(IMAGE_DTYPES),
                        help="image dtypes")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--no-spills", action="store_true", help="fail when a variant spills registers")
    args = parser.parse_args(argv)
    if not takes_constexprs():
        print(f"compile_triton: Triton {triton.__version__} is too old for this tool (its ASTSource takes no "
              "constexprs=); install a newer triton (3.6 and 3.8 work) to compile the kernels ahead of time",
              file=sys.stderr)
        return 2

    rows = []
    print(f"triton {triton.__version__}: compiling DART's kernels for " + ", ".join(f"sm_{a}" for a in args.arch))
    for name in args.dtypes:
        for patch_size in PATCH_SIZES:
            for launch in record_launches(IMAGE_DTYPES[name], patch_size):
                for arch in args.arch:
                    row = compile_launch(launch, arch)
                    print(describe(row), flush=True)
                    rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [row for row in rows if "error" in row]
    spilled = [row for row in rows if row.get("LOCAL", 0) > 0]
    print(f"{len(rows) - len(failed)} of {len(rows)} variants compiled; {len(spilled)} spill registers")
    return 1 if failed or (args.no_spills and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
