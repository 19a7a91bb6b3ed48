"""Warnings in the command-line tools: one ``PROGRAM: warning: ...`` line, no source location."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from dart_core.console import warning_line, warnings_as_messages
from PIL import Image


def test_warnings_become_one_line_each_and_the_hook_is_restored(capsys):
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.raises(KeyError), warnings_as_messages("prog"):
            warnings.warn("look here", stacklevel=2)
            warnings.warn("changes soon", FutureWarning, stacklevel=2)
            warnings.warn("slow path", RuntimeWarning, stacklevel=2)
            raise KeyError("a failing command")
    assert warnings.showwarning is before
    assert capsys.readouterr().err.splitlines() == [
        "prog: warning: look here", "prog: warning (FutureWarning): changes soon", "prog: warning: slow path"]
    assert warning_line("x", "m", DeprecationWarning) == "x: warning (DeprecationWarning): m"


def test_python_filters_still_decide_what_shows(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with warnings_as_messages("prog"):
            warnings.warn("hidden", stacklevel=2)
    assert capsys.readouterr().err == ""


def test_the_random_scorer_warning_of_dart_core_visualize_is_one_plain_line(tmp_path):
    Image.new("RGB", (48, 40), (120, 30, 200)).save(tmp_path / "photo.png")
    done = subprocess.run([sys.executable, "-m", "dart_core", "visualize", "photo.png", "--out", "out.png"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "randomly initialised" in line]
    assert len(lines) == 1 and lines[0].startswith("dart-core: warning: the DART scorer's backbone is frozen")
    assert "UserWarning" not in done.stderr and ".py:" not in done.stderr
