"""The packages as a user gets them: wheels built from packages/, installed (not editable) into a
fresh directory, imported from there in a new process, the C kernels compiled from the sources
the wheel shipped, and the ``dart-core`` and ``dart-video`` commands run.

The editable installs the tests otherwise run from would hide a module or kernel source that the
wheel leaves out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dart-core", "dart-video", "dart-dense")

CHECK = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import dart_core, dart_video, dart_dense
    from dart_core.kernels import native, sample_strip_patches

    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64)
    line_y = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) * 11
    sample_x = torch.rand(2, 5, 4, generator=g, dtype=torch.float64) * 29
    compiled = sample_strip_patches(images, line_y, sample_x, "native")
    reference = sample_strip_patches(images, line_y, sample_x, "torch")
    print(json.dumps({
        "modules": [m.__file__ for m in (dart_core, dart_video, dart_dense)],
        "library": str(native.build()),
        "max_difference": (compiled - reference).abs().max().item(),
    }))
    """
)


def test_wheels_install_and_their_kernels_build_from_the_shipped_sources(tmp_path):
    wheels = tmp_path / "wheels"
    for package in PACKAGES:
        # a copy: a build in the checkout would reuse (and leave) build/ and *.egg-info folders there
        source = shutil.copytree(ROOT / "packages" / package, tmp_path / "src" / package,
                                 ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), str(source)], check=True, timeout=300)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    *map(str, sorted(wheels.glob("*.whl")))], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "DART_KERNEL_CACHE": str(tmp_path / "kernel-cache")}
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # imported from the installed wheels, not from the checkout's editable installs
    assert all(Path(path).is_relative_to(site) for path in report["modules"]), report["modules"]
    assert Path(report["library"]).is_relative_to(tmp_path / "kernel-cache")  # built here, from the wheel's sources
    assert report["max_difference"] < 1e-12
    for command in ("dart-core", "dart-video"):  # the console scripts the wheels declare
        result = subprocess.run([str(site / "bin" / command), "--help"], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: {command}"), result.stderr
