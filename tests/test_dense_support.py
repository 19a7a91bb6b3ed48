"""Shared fixtures of the dart_dense test files (no tests here)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The dense tests run tiny shapes, where a second intra-op thread only adds OpenMP spinning (6× the CPU
    time measured on two shared cores): run each test on one thread and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
