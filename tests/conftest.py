import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TIMM_FUSED_ATTN", "0")
# The Triton kernels' tests run them in the CPU interpreter; Triton reads the switch when a kernel
# is decorated, i.e. on the first import of dart_core by any test module. On a GPU, run the
# kernel tests for real with `TRITON_INTERPRET=0 pytest tests/test_kernels.py`.
os.environ.setdefault("TRITON_INTERPRET", "1")
