import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TIMM_FUSED_ATTN", "0")
# The Triton kernels' tests run them in the CPU interpreter; Triton reads the switch when a kernel
# is decorated, i.e. on the first import of dart_core by any test module. On a GPU, run the
# kernel tests for real with `TRITON_INTERPRET=0 pytest tests/test_kernels.py`.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def subnormals_stay_representable():
    """Code that torch 2.5's inductor compiles is built with -ffast-math and turns on flush-to-zero
    for the whole process when it loads; each test starts with IEEE subnormals again."""
    torch.set_flush_denormal(False)
    yield
