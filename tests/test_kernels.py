"""The fused patch sampler: Triton kernels (CPU interpreter), the compiled C kernels, the PyTorch
path and an oracle.

The oracle is ``F.grid_sample`` twice (border padding across lines, zero padding along the
strip), as in the published code; it shares no code with ``dart_core.kernels``. The Triton
kernels run under ``TRITON_INTERPRET=1``, which conftest.py sets before any test module imports
them (Triton reads it when a kernel is decorated, so it must precede every import of dart_core).
"""


import os
from pathlib import Path

import pytest
import reference_dart as ref
import torch
import torch.nn.functional as F
from dart_core import partition, resample_pos_embed, sample_patches
from dart_core.intervals import running_integral_at
from dart_core.kernels import native, resolve_backend, sample_strip_patches
from dart_core.kernels.patch_function import triton_interpreted
from dart_core.partition import default_num_rows
from hypothesis import given, settings
from hypothesis import strategies as st

BACKENDS = ["torch", "triton", "native"]
# conftest.py runs the Triton kernels in the CPU interpreter. On a GPU, `TRITON_INTERPRET=0 pytest
# tests/test_kernels.py` runs them on the GPU for real: the tests' tensors stay on the CPU (autograd
# carries gradients across the copies) and the other backends run on the CPU as always.
TRITON_DEVICE = torch.device("cuda" if not triton_interpreted() and torch.cuda.is_available() else "cpu")


def device_of(backend):
    return TRITON_DEVICE if backend == "triton" else torch.device("cpu")


def sample(images, line_y, sample_x, backend):
    """``sample_strip_patches`` on ``backend``'s device (:data:`TRITON_DEVICE`); the result on the CPU."""
    device = device_of(backend)
    return sample_strip_patches(images.to(device), line_y.to(device), sample_x.to(device), backend).cpu()


def oracle(images, line_y, sample_x):
    """(B, C, H, W), (B, R, P) heights, (B, N, P) strip positions → (B, N, C, P, P) via grid_sample."""
    batch, _, height, width = images.shape
    rows, patch = line_y.shape[1:]
    out = []
    for b in range(batch):
        gy, gx = torch.meshgrid(line_y[b].reshape(-1), torch.arange(width, dtype=images.dtype), indexing="ij")
        grid = torch.stack([2 * gx / (width - 1) - 1, 2 * gy / (height - 1) - 1], -1)[None]
        lines = F.grid_sample(images[b:b + 1], grid, mode="bilinear", padding_mode="border", align_corners=True)
        strip = lines.view(1, -1, rows, patch, width).permute(0, 1, 3, 2, 4).reshape(1, -1, patch, rows * width)
        xs = sample_x[b].reshape(-1)
        gy, gx = torch.meshgrid(torch.arange(patch, dtype=images.dtype), xs, indexing="ij")
        grid = torch.stack([2 * gx / (rows * width - 1) - 1, 2 * gy / (patch - 1) - 1], -1)[None]
        values = F.grid_sample(strip, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(values[0].view(-1, patch, sample_x.shape[1], patch).permute(2, 0, 1, 3))
    return torch.stack(out)


def random_case(batch, channels, height, width, rows, tokens, patch, seed, dtype=torch.float64, spill=0.0):
    """Images and sample positions; ``spill`` > 0 pushes positions past the image and strip ends."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    line_y = (torch.rand(batch, rows, patch, generator=g, dtype=torch.float64) * (1 + 2 * spill) - spill) * (height - 1)
    sample_x = (torch.rand(batch, tokens, patch, generator=g, dtype=torch.float64) * (1 + 2 * spill) - spill)
    return images, line_y, sample_x * rows * width


CASES = [  # batch, channels, height, width, rows, tokens, patch
    (2, 3, 9, 11, 3, 5, 4),
    (1, 2, 6, 5, 2, 3, 3),  # patch size not a power of two
    (3, 1, 16, 8, 4, 6, 5),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("spill", [0.0, 0.3])
def test_values_match_oracle_float64(backend, case, spill):
    images, line_y, sample_x = random_case(*case, seed=sum(case), spill=spill)
    got = sample(images, line_y, sample_x, backend)
    assert got.shape == (case[0], case[5], case[1], case[6], case[6]) and got.is_contiguous()
    torch.testing.assert_close(got, oracle(images, line_y, sample_x), rtol=0, atol=1e-12)


def assert_gradients_match_oracle(images, line_y, sample_x, seed):
    """Gradients to images, line heights and strip positions: both backends against grid_sample's."""
    batch, channels = images.shape[:2]
    tokens, patch = sample_x.shape[1:]
    g = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(batch, tokens, channels, patch, patch, generator=g, dtype=torch.float64)
    grads = {}
    for name in ["oracle", *BACKENDS]:
        inputs = [t.clone().requires_grad_() for t in (images, line_y, sample_x)]
        out = oracle(*inputs) if name == "oracle" else sample(*inputs, name)
        grads[name] = torch.autograd.grad((out * cotangent).sum(), inputs)
    for name in BACKENDS:
        for got, want in zip(grads[name], grads["oracle"], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", CASES[:2])
def test_gradients_match_oracle_float64(case):
    assert_gradients_match_oracle(*random_case(*case, seed=3 + sum(case), spill=0.2), seed=sum(case))


def test_gradients_where_taps_straddle_strip_ends_and_row_seams():
    """Left taps at -1 and S - 1 (one tap outside), past both ends, and across each seam."""
    rows, width, patch = 3, 5, 4
    length = rows * width
    images, line_y, _ = random_case(2, 2, 7, width, rows, 3, patch, seed=12)
    sites = [-3.5, -1.25, -0.5, width - 0.5, 2 * width - 0.25, 2.5, length - 1.5, length - 0.5, length - 0.01,
             length + 0.5, length + 4.0, 2 * width + 0.5]
    sample_x = torch.tensor(sites, dtype=torch.float64).view(1, 3, patch).repeat(2, 1, 1)
    assert_gradients_match_oracle(images, line_y, sample_x, seed=13)


def test_gradcheck_torch_path():
    images, line_y, sample_x = random_case(2, 2, 7, 6, 2, 3, 3, seed=11, spill=0.2)
    inputs = tuple(t.requires_grad_() for t in (images, line_y, sample_x))
    assert torch.autograd.gradcheck(lambda *a: sample_strip_patches(*a, backend="torch"), inputs, eps=1e-7, atol=1e-6)


def test_gradcheck_native_kernels():
    images, line_y, sample_x = random_case(2, 2, 7, 6, 2, 3, 3, seed=11, spill=0.2)
    inputs = tuple(t.requires_grad_() for t in (images, line_y, sample_x))
    assert torch.autograd.gradcheck(lambda *a: sample_strip_patches(*a, backend="native"), inputs, eps=1e-7, atol=1e-6)


def test_gradcheck_triton_kernels():
    images, line_y, sample_x = random_case(1, 1, 5, 4, 2, 2, 2, seed=5, spill=0.2)
    inputs = tuple(t.requires_grad_() for t in (images, line_y, sample_x))
    assert torch.autograd.gradcheck(lambda *a: sample(*a, "triton"), inputs, eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_tight_against_float64(backend):
    images, line_y, sample_x = random_case(2, 3, 12, 10, 3, 7, 4, seed=9, spill=0.1)
    cotangent = torch.randn(2, 7, 3, 4, 4, dtype=torch.float64)
    results = {}
    for dtype in (torch.float64, torch.float32):
        inputs = [images.to(dtype).requires_grad_(), line_y.clone().requires_grad_(), sample_x.clone().requires_grad_()]
        out = sample(*inputs, backend)
        assert out.dtype == dtype
        grads = torch.autograd.grad((out * cotangent.to(dtype)).sum(), inputs)
        results[dtype] = (out, *grads)
    for got, want in zip(results[torch.float32], results[torch.float64], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_images(backend):
    images, line_y, sample_x = random_case(1, 3, 8, 8, 2, 4, 4, seed=2)
    got = sample(images.bfloat16(), line_y, sample_x, backend)
    assert got.dtype == torch.bfloat16
    want = oracle(images.bfloat16().double(), line_y, sample_x)
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)


def test_partition_path_matches_reference_and_backends_agree_on_score_gradients():
    """sample_patches on a real partition: the slow reference's values, and equal score gradients."""
    g = torch.Generator().manual_seed(4)
    scores = (torch.rand(2, 3, 4, generator=g, dtype=torch.float64) ** 2 + 0.1).requires_grad_()
    images = torch.randn(2, 2, 12, 17, generator=g, dtype=torch.float64)
    cotangent = torch.randn(2, 9, 2, 4, 4, generator=g, dtype=torch.float64)
    grads = []
    for backend in BACKENDS:
        part = partition(scores, 3, 9)
        device = device_of(backend)
        on_device = type(part)(*(t.to(device) for t in (part.row_edges, part.token_edges, part.density)))
        patches = sample_patches(images.to(device), on_device, 4, backend=backend).cpu()
        want = ref.sample_patches(images, part.row_edges.detach(), part.token_edges.detach(), 4)
        torch.testing.assert_close(patches.detach(), want, rtol=0, atol=1e-12)
        grads.append(torch.autograd.grad((patches * cotangent).sum(), scores)[0])
    part = partition(scores, 3, 9)
    want = torch.autograd.grad((ref.sample_patches(images, part.row_edges, part.token_edges, 4) * cotangent).sum(), scores)[0]
    for got in grads:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_are_independent_of_their_batch(backend):
    """A batch gives each sample what it gets alone: values and all gradients (image included)."""
    images, line_y, sample_x = random_case(3, 2, 10, 9, 3, 5, 4, seed=8, spill=0.1)
    cotangent = torch.randn(3, 5, 2, 4, 4, dtype=torch.float64)

    def run(sl):
        inputs = [t[sl].clone().requires_grad_() for t in (images, line_y, sample_x)]
        out = sample(*inputs, backend)
        return (out, *torch.autograd.grad((out * cotangent[sl]).sum(), inputs))

    whole = run(slice(None))
    for i in range(3):
        for got, want in zip(run(slice(i, i + 1)), whole, strict=True):
            torch.testing.assert_close(got, want[i:i + 1], rtol=0, atol=1e-13)


@settings(max_examples=30, deadline=None)
@given(case=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(2, 9), st.integers(2, 9),
                      st.integers(1, 4), st.integers(1, 6), st.integers(2, 5)),
       seed=st.integers(0, 2**16), spill=st.sampled_from([0.0, 0.5]), backend=st.sampled_from(BACKENDS))
def test_both_paths_match_oracle_on_any_shape(case, seed, spill, backend):
    images, line_y, sample_x = random_case(*case, seed=seed, spill=spill)
    torch.testing.assert_close(sample(images, line_y, sample_x, backend),
                               oracle(images, line_y, sample_x), rtol=0, atol=1e-12)


def test_per_sample_positional_tables_match_shared_ones():
    """A (B, h, w, D) table gives each sample what its own (1, h, w, D) table gives it."""
    g = torch.Generator().manual_seed(6)
    part = partition(torch.rand(3, 4, 5, generator=g, dtype=torch.float64) + 0.1, 3, 8)
    tables = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    batched = resample_pos_embed(tables, part)
    for i in range(3):
        one = type(part)(part.row_edges[i:i + 1], part.token_edges[i:i + 1], part.density[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], resample_pos_embed(tables[i:i + 1], one), rtol=0, atol=1e-12)
        torch.testing.assert_close(batched[i:i + 1], ref.pos_embed(tables[i:i + 1], part.density[i:i + 1], 3, 8),
                                   rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="pos_grid has batch 2"):
        resample_pos_embed(tables[:2], part)


def test_integer_positions_read_pixels_exactly():
    """At integer sites bilinear sampling is a pixel read; the strip's last column + 1 reads zero."""
    images = torch.arange(2 * 4 * 5, dtype=torch.float64).view(1, 2, 4, 5)
    line_y = torch.tensor([[[0.0, 3.0], [1.0, 2.0]]], dtype=torch.float64)  # R = 2, P = 2
    sample_x = torch.tensor([[[0.0, 4.0], [5.0, 9.0], [10.0, 10.0]]], dtype=torch.float64)  # N = 3
    for backend in BACKENDS:
        out = sample(images, line_y, sample_x, backend)
        # Token 0 reads row 0 (lines 0 and 3) at columns 0 and 4; token 1 row 1 (lines 1, 2) at 0 and 4.
        torch.testing.assert_close(out[0, 0, 0], images[0, 0][[0, 3]][:, [0, 4]])
        torch.testing.assert_close(out[0, 1, 1], images[0, 1][[1, 2]][:, [0, 4]])
        assert torch.all(out[0, 2] == 0)  # x = R·W is past the strip: zero padding


def test_backend_dispatch():
    assert resolve_backend(torch.device("cpu"), "auto") == "native"  # a C compiler is on this machine
    with native.disabled():
        assert resolve_backend(torch.device("cpu"), "auto") == "torch"
    assert resolve_backend(torch.device("cpu"), "auto") == "native"
    assert resolve_backend(torch.device("cuda"), "auto") == "triton"  # CUDA tensors → Triton
    if triton_interpreted():  # conftest.py's default: CPU tensors may go to Triton
        assert resolve_backend(torch.device("cpu"), "triton") == "triton"
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend(torch.device("cpu"), "cuda")
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        resolve_backend(torch.device("cuda"), "native")
    with pytest.raises(ValueError, match="line_y"):
        sample_strip_patches(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2), torch.zeros(1, 2, 2))


def test_triton_refuses_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend(torch.device("cpu"), "triton")


def test_native_kernels_build_into_a_fresh_cache_and_fall_back_without_a_compiler(tmp_path, monkeypatch):
    """The library builds from the shipped source; without a compiler 'auto' warns and uses PyTorch."""
    monkeypatch.setenv("DART_KERNEL_CACHE", str(tmp_path / "cache"))
    built = native.build()
    assert built.parent == tmp_path / "cache" and built.stat().st_size > 0
    stamp = built.stat().st_mtime_ns
    assert native.build() == built and built.stat().st_mtime_ns == stamp  # cached: same key, not rebuilt
    assert sorted(p.name for p in built.parent.iterdir()) == [built.name]  # no partial files left
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_load", native._load.__wrapped__)  # bypass the process-wide cache
    monkeypatch.setattr(native, "_warned", type(native._warned)())
    with pytest.raises(native.NativeUnavailable, match="no C compiler"):
        resolve_backend(torch.device("cpu"), "native")
    with pytest.warns(RuntimeWarning, match="PyTorch CPU path"):
        assert resolve_backend(torch.device("cpu"), "auto") == "torch"


def token_samples(edges, patch):
    """(N, P) pixel-centre sample positions of tokens with strip edges [edges[n], edges[n + 1])."""
    edges = torch.as_tensor(edges, dtype=torch.float64)
    centres = (torch.arange(patch, dtype=torch.float64) + 0.5) / patch
    return edges[:-1, None] + centres * (edges[1:] - edges[:-1])[:, None] - 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_on_a_partition_of_narrow_wide_and_seam_crossing_tokens(backend):
    """Float32 kernels against the float64 oracle on the geometry a partition makes: runs of one
    token's 16 samples spanning 8 to 200 columns of a row (the native kernels read a token that
    spans under 64 columns through AVX-512 permutes where the CPU has them, a wider one with
    scalar loads) and tokens cut by a row seam (runs shorter than 16)."""
    g = torch.Generator().manual_seed(31)
    rows, width, patch = 2, 300, 16
    edges = [0, 9, 40, 100, 300, 330, 392, 600]  # widths 9, 31, 60, 200, 30 (across the seam), 62, 208
    sample_x = token_samples(edges, patch)[None].repeat(2, 1, 1) + 0.137  # off integers, where the slope jumps
    sample_x[1] += torch.rand(sample_x.shape[1:], generator=g, dtype=torch.float64) * 0.5  # jittered, uneven spans
    line_y = torch.sort(torch.rand(2, rows, patch, generator=g, dtype=torch.float64) * 11, dim=-1).values
    images = torch.randn(2, 3, 12, width, generator=g, dtype=torch.float64)
    tokens = sample_x.shape[1]
    cotangent = torch.randn(2, tokens, 3, patch, patch, generator=g, dtype=torch.float64)
    want_inputs = [t.clone().requires_grad_() for t in (images, line_y, sample_x)]
    want = oracle(*want_inputs)
    want_grads = torch.autograd.grad((want * cotangent).sum(), want_inputs)
    inputs = [images.float().requires_grad_(), line_y.float().requires_grad_(), sample_x.float().requires_grad_()]
    got = sample(*inputs, backend)
    assert got.dtype == torch.float32
    got_grads = torch.autograd.grad((got * cotangent.float()).sum(), inputs)
    # float32 positions move samples by up to ~3e-5 columns at x = 600: values move by that times
    # the image's slope (randn: up to ~8 per column)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-4)
    for name, one, other in zip(("images", "line_y", "sample_x"), got_grads, want_grads, strict=True):
        scale = max(1.0, other.abs().max().item())
        torch.testing.assert_close(one.double(), other, rtol=0, atol=1e-3 * scale, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_images_nan_reaches_only_the_samples_that_tap_it(backend):
    """A NaN pixel that no sample taps changes nothing, values or gradients: the vector path of the
    native kernels reads whole windows of columns and must not let unused columns leak."""
    images = torch.randn(1, 1, 6, 200, dtype=torch.float32, generator=torch.Generator().manual_seed(5))
    line_y = torch.tensor([[[0.5, 1.5, 3.0, 4.5]]])
    sample_x = torch.tensor([[[10.2, 11.4, 12.6, 13.8], [150.3, 151.1, 152.9, 153.2]]])
    clean = [images.clone().requires_grad_(), line_y.clone().requires_grad_(), sample_x.clone().requires_grad_()]
    dirty_images = images.clone()
    dirty_images[..., 15:149] = float("nan")  # every column of the two tokens' windows that is not a tap
    dirty = [dirty_images.requires_grad_(), line_y.clone().requires_grad_(), sample_x.clone().requires_grad_()]
    results = []
    for inputs in (clean, dirty):
        out = sample(*inputs, backend)
        results.append((out, *torch.autograd.grad(out.sum(), inputs[1:])))
    for one, other in zip(*results, strict=True):
        assert torch.isfinite(other).all()
        # gradients up to ~6, summed by float32 atomics in any order on a GPU: a few ulps apart
        torch.testing.assert_close(other, one, rtol=0, atol=1e-5)


def test_native_kernel_sources_are_all_in_the_cache_key():
    """A kernel source left out of native.SOURCES would let an edited build reuse a stale library."""
    here = Path(native.__file__).parent
    assert set(native.SOURCES) == {path.name for path in here.iterdir() if path.suffix in (".c", ".h")}


def test_native_kernels_split_the_batch_between_threads():
    """Two threads (each a slice of the batch) give the one-thread result exactly."""
    images, line_y, sample_x = random_case(5, 2, 9, 7, 3, 4, 3, seed=21, dtype=torch.float32, spill=0.2)
    inputs = [images.requires_grad_(), line_y.requires_grad_(), sample_x.requires_grad_()]
    cotangent = torch.randn(5, 4, 2, 3, 3)
    results = []
    threads = torch.get_num_threads()
    assert native.openmp()  # gcc here: the kernels split the batch between torch's OpenMP threads
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out = sample_strip_patches(*inputs, backend="native")
            results.append((out, *torch.autograd.grad((out * cotangent).sum(), inputs)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_native_cache_falls_back_to_a_private_temporary_directory(tmp_path, monkeypatch):
    """An unwritable user cache falls back to a per-user temporary directory, which must be ours alone."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.delenv("DART_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # <file>/dart_core cannot be created
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    built = native.build()
    assert built.parent == tmp_path / "tmp" / f"dart_core-{os.getuid()}"
    assert built.parent.stat().st_mode & 0o777 == 0o700
    built.parent.chmod(0o777)  # as if another user could write there: refuse it
    with pytest.raises(native.NativeUnavailable, match="not owned by this user alone"):
        native.build()


def _sample_in_child(queue):
    torch.set_num_threads(1)  # what DataLoader workers do (GNU OpenMP's threads do not survive fork)
    images, line_y, sample_x = random_case(4, 1, 6, 5, 2, 3, 2, seed=3)
    queue.put(sample_strip_patches(images, line_y, sample_x, "native").sum().item())


def test_native_kernels_work_in_a_forked_worker():
    """A forked child with one thread (a DataLoader worker) samples after the parent ran the
    kernels on two OpenMP threads. (Two threads in such a child hang in torch's own ops as well:
    the kernels share torch's OpenMP runtime and its rules.)"""
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        images, line_y, sample_x = random_case(4, 1, 6, 5, 2, 3, 2, seed=3)
        for _ in range(20):  # the parent's OpenMP threads are up and idle when it forks
            want = sample_strip_patches(images, line_y, sample_x, "native").sum().item()
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_sample_in_child, args=(queue,), daemon=True)
        child.start()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0, "the child hung or failed sampling"
        assert queue.get(timeout=5) == pytest.approx(want, abs=1e-12)
    finally:
        torch.set_num_threads(threads)


def test_compiles_without_graph_breaks_and_under_bf16_autocast():
    """fullgraph=True fails on any graph break, e.g. a host sync; the projection autocasts."""
    g = torch.Generator().manual_seed(1)
    scores = (torch.rand(2, 3, 3, generator=g) + 0.1).requires_grad_()
    images = torch.randn(2, 3, 24, 24, generator=g)
    weight = torch.randn(8, 3 * 4 * 4, generator=g, requires_grad=True)

    def tokens(s):
        return sample_patches(images, partition(s, 3, 9), 4).flatten(2) @ weight.T

    eager = tokens(scores)
    compiled = torch.compile(tokens, backend="aot_eager", fullgraph=True)(scores)
    torch.testing.assert_close(compiled, eager)
    (grad_eager,) = torch.autograd.grad(eager.square().sum(), scores)
    (grad_compiled,) = torch.autograd.grad(compiled.square().sum(), scores)
    torch.testing.assert_close(grad_compiled, grad_eager)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = tokens(scores)
    assert mixed.dtype == torch.bfloat16
    torch.autograd.grad(mixed.float().square().sum(), scores)
    torch.testing.assert_close(mixed.float(), eager, rtol=0.05, atol=0.05 * eager.abs().max().item())


def test_inductor_compiles_the_tokenizer_path():
    """torch.compile's default backend: the sampler runs as an opaque custom op inside the graph."""
    g = torch.Generator().manual_seed(2)
    part = partition(torch.rand(2, 3, 3, generator=g) + 0.1, 3, 9)
    edges = (part.row_edges.clone().requires_grad_(), part.token_edges.clone().requires_grad_())
    table = torch.randn(1, 3, 3, 8, generator=g, requires_grad=True)
    images = torch.randn(2, 3, 24, 24, generator=g)
    weight = torch.randn(8, 3 * 4 * 4, generator=g)

    def tokens(rows, toks, t):
        p = type(part)(rows, toks, part.density)
        return sample_patches(images, p, 4).flatten(2) @ weight.T + resample_pos_embed(t, p)

    inputs = (*edges, table)
    eager = tokens(*inputs)
    compiled = torch.compile(tokens)(*inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(compiled.square().sum(), inputs),
                         torch.autograd.grad(eager.square().sum(), inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_interval_average_shares_a_batch_of_one_and_matches_its_dense_weights():
    """A (1, n, D) signal serves every row of edges; the dense weights give the same averages."""
    from dart_core.intervals import interval_average, overlap_average_weights, row_overlap_normaliser

    g = torch.Generator().manual_seed(12)
    values = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    inner = torch.sort(torch.rand(4, 3, generator=g, dtype=torch.float64) * 6, dim=1).values
    edges = torch.cat([torch.zeros(4, 1, dtype=torch.float64), inner, torch.full((4, 1), 6.0, dtype=torch.float64)], 1)
    shared = interval_average(values, edges, row_overlap_normaliser)
    torch.testing.assert_close(shared, interval_average(values.expand(4, -1, -1), edges, row_overlap_normaliser))
    torch.testing.assert_close(shared, overlap_average_weights(edges, 6, row_overlap_normaliser) @ values[0])
    with pytest.raises(ValueError, match="values has batch 2"):
        interval_average(values.expand(2, -1, -1), edges, row_overlap_normaliser)


def slow_interval_integral(values, points):
    """Oracle: sum each interval's cell overlaps one by one (points clamped to [0, n])."""
    batch, count = points.shape[0], points.shape[1] - 1
    cells = values.shape[1]
    out = torch.zeros(batch, count, values.shape[2], dtype=values.dtype)
    for b in range(batch):
        for k in range(count):
            a, e = (float(min(max(p, 0.0), cells)) for p in points[b, k:k + 2])
            sign = 1.0 if e >= a else -1.0
            lo, hi = min(a, e), max(a, e)
            for i in range(cells):
                overlap = max(0.0, min(hi, i + 1) - max(lo, i))
                out[b, k] += sign * overlap * values[b if values.shape[0] > 1 else 0, i]
    return out


def integral_case(batch, cells, count, dim, seed, spill=0.3, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, cells, dim, generator=g, dtype=torch.float64)
    points = (torch.rand(batch, count + 1, generator=g, dtype=torch.float64) * (1 + 2 * spill) - spill) * cells
    return values, points if shuffle else torch.sort(points, dim=1).values


@pytest.mark.parametrize("shuffle", [False, True])
def test_interval_integral_both_paths_match_the_oracle(shuffle):
    """Native kernel and running-integral path: values past [0, n] clamp; decreasing ends integrate negatively."""
    from dart_core.intervals import interval_integral, running_integral_at
    from dart_core.kernels.interval_native import interval_integral as native_integral

    values, points = integral_case(3, 7, 6, 4, seed=31, shuffle=shuffle)
    want = slow_interval_integral(values, points)
    running = running_integral_at(values, points)
    torch.testing.assert_close(running[:, 1:] - running[:, :-1], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(native_integral(values, points), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(interval_integral(values[:1], points), slow_interval_integral(values[:1], points),
                               rtol=0, atol=1e-12)  # a shared (1, n, D) signal


def test_interval_integral_native_gradients():
    """gradcheck and gradgradcheck (float64), and equal gradients with the running-integral path,
    clamped points included."""
    from dart_core.intervals import running_integral_at
    from dart_core.kernels.interval_native import interval_integral as native_integral

    values, points = integral_case(2, 5, 4, 3, seed=32, shuffle=True)
    inputs = (values.requires_grad_(), points.requires_grad_())
    assert torch.autograd.gradcheck(native_integral, inputs, eps=1e-7, atol=1e-6)
    assert torch.autograd.gradgradcheck(native_integral, inputs, eps=1e-7, atol=1e-6)  # create_graph=True works
    cotangent = torch.randn(2, 4, 3, dtype=torch.float64)
    running = running_integral_at(*inputs)
    want = torch.autograd.grad(((running[:, 1:] - running[:, :-1]) * cotangent).sum(), inputs)
    got = torch.autograd.grad((native_integral(*inputs) * cotangent).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), cells=st.integers(1, 9), count=st.integers(1, 8), dim=st.integers(1, 5),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_interval_integral_native_matches_running_integral_on_any_shape(batch, cells, count, dim, seed, dtype):
    from dart_core.intervals import running_integral_at
    from dart_core.kernels.interval_native import interval_integral as native_integral

    values, points = (t.to(dtype) for t in integral_case(batch, cells, count, dim, seed))
    running = running_integral_at(values, points)
    tol = 1e-12 if dtype == torch.float64 else 2e-5 * cells
    torch.testing.assert_close(native_integral(values, points), running[:, 1:] - running[:, :-1], rtol=0, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_and_far_positions(backend):
    """NaN / inf positions give NaN values on every backend (no crash, no silent zero); far finite
    positions read the zero padding; the other samples are untouched."""
    images, line_y, sample_x = random_case(1, 2, 6, 5, 2, 3, 3, seed=41)
    want = sample(images, line_y, sample_x, backend)
    bad_x = sample_x.clone()
    bad_x[0, 0, 1], bad_x[0, 1, 0], bad_x[0, 2, 2] = float("nan"), float("inf"), 1e30
    got = sample(images, line_y, bad_x, backend)
    assert torch.isnan(got[0, 0, :, :, 1]).all() and torch.isnan(got[0, 1, :, :, 0]).all()
    assert torch.all(got[0, 2, :, :, 2] == 0)
    keep = torch.ones_like(got, dtype=torch.bool)
    keep[0, 0, :, :, 1] = keep[0, 1, :, :, 0] = keep[0, 2, :, :, 2] = False
    torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=1e-12)
    bad_y = line_y.clone()
    bad_y[0, 1, 2] = float("nan")  # line 2 of row 1
    got = sample(images, bad_y, sample_x, backend)
    row_of = (sample_x[0].floor() // images.shape[3]).long()  # (N, P) the row each left tap reads
    reads_row_1 = (row_of == 1) | ((sample_x[0].floor() + 1) // images.shape[3] == 1)
    assert torch.isnan(got[0, :, :, 2][reads_row_1.unsqueeze(1).expand(-1, 2, -1)]).all()


def test_empty_shapes_raise_clear_errors():
    for backend in ("torch", "native"):
        with pytest.raises(ValueError, match="nothing to sample"):
            sample_strip_patches(torch.randn(1, 1, 0, 4), torch.rand(1, 2, 2), torch.rand(1, 3, 2) * 7, backend)
    from dart_core.intervals import interval_integral

    with pytest.raises(ValueError, match="no cells"):
        interval_integral(torch.randn(2, 0, 3), torch.rand(2, 4))


def test_interval_kernel_checks_its_inputs():
    """The C code reads raw memory: the op refuses shapes, batches and dtypes it cannot take."""
    from dart_core.kernels.interval_native import interval_integral as native_integral

    points = torch.tensor([[0.0, 1.0, 2.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="one batch size"):
        native_integral(torch.ones(1, 4, 2, dtype=torch.float64), points.expand(3, -1))
    with pytest.raises(ValueError, match="share a dtype"):
        native_integral(torch.ones(1, 4, 2, dtype=torch.float32), points)
    with pytest.raises(ValueError, match="share a dtype"):
        native_integral(torch.ones(1, 4, 2, dtype=torch.float16), points.half())


def test_interval_integral_nan_points_and_gradients_at_the_ends():
    """A NaN end gives a NaN integral on both paths; at exactly 0 and n the clamp passes no
    gradient (torch.clamp's convention), on both paths."""
    from dart_core.intervals import running_integral_at
    from dart_core.kernels.interval_native import interval_integral as native_integral

    def both(values, points):
        running = running_integral_at(values, points)
        return {"native": native_integral(values, points), "torch": running[:, 1:] - running[:, :-1]}

    values = torch.randn(1, 3, 2, dtype=torch.float64)
    for name, out in both(values, torch.tensor([[0.5, float("nan"), 2.0, 2.5]], dtype=torch.float64)).items():
        assert torch.isnan(out[0, :2]).all() and torch.isfinite(out[0, 2]).all(), name
    values.requires_grad_()
    points = torch.tensor([[0.0, 1.0, 2.0, 3.0, 1.5]], dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(1, 4, 2, dtype=torch.float64)
    grads = {name: torch.autograd.grad((out * cotangent).sum(), (values, points))
             for name, out in both(values, points).items()}
    torch.testing.assert_close(grads["native"], grads["torch"], rtol=0, atol=1e-12)
    assert grads["native"][1][0, 0] == 0 and grads["native"][1][0, 3] == 0  # the ends 0 and n
    assert grads["native"][1][0, 1] != 0 and grads["native"][1][0, 4] != 0


@pytest.mark.parametrize("shape", [((14, 14), 196), ((8 * 14, 14), 784)])  # DeiT's grid; a video's tall strip
def test_positional_resampling_ignores_autocast(shape):
    """Under bf16 autocast the row resampling is a matmul that autocasts: the token edges must not
    be rounded to the bf16 strip's precision (which snaps them to whole cells, or to multiples of 8
    on a video strip, and zeroes tokens whose ends collide)."""
    (height, width), tokens = shape
    g = torch.Generator().manual_seed(3)
    part = partition(torch.rand(2, height, width, generator=g) + 0.05, default_num_rows(tokens, (height, width)), tokens)
    table = torch.randn(1, height, width, 16, generator=g) * 0.02
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = resample_pos_embed(table, part)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, resample_pos_embed(table, part), rtol=0, atol=0)  # as without autocast
    torch.testing.assert_close(got.double(), resample_pos_embed(table.double(), part), rtol=0, atol=1e-5)
    direct = running_integral_at(table.flatten(1, 2)[:, :50].bfloat16(), torch.tensor([[10.3, 20.7]]))
    exact = running_integral_at(table.flatten(1, 2)[:, :50].bfloat16().double(), torch.tensor([[10.3, 20.7]]))
    assert direct.dtype == torch.bfloat16  # bf16 values, but the points keep their fractions
    torch.testing.assert_close(direct.double(), exact.bfloat16().double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_in_any_memory_layout_sample_the_same_patches(backend):
    """Sample positions with the batch innermost (a permuted tensor) give the contiguous result;
    the Triton kernel indexes its taps as contiguous, so the dispatcher must make them so."""
    g = torch.Generator().manual_seed(4)
    images = torch.randn(3, 2, 8, 8, generator=g)
    line_y = (torch.rand(3, 2, 2, generator=g) * 7).permute(2, 1, 0).contiguous().permute(2, 1, 0)
    sample_x = (torch.rand(3, 5, 2, generator=g) * 15).permute(1, 2, 0).contiguous().permute(2, 0, 1)
    want = sample(images, line_y.contiguous(), sample_x.contiguous(), backend)
    torch.testing.assert_close(sample(images, line_y, sample_x, backend), want, rtol=0, atol=0)


def test_triton_launches_on_the_tensors_gpu(monkeypatch):
    """Triton launches on the current CUDA device: tensors on cuda:1 must run with cuda:1 current.
    No GPU here, so the device switch is recorded instead of made."""
    import contextlib

    from dart_core.kernels import patch_triton

    current = ["cuda:0"]

    @contextlib.contextmanager
    def switch(device):
        previous, current[0] = current[0], str(device)
        yield
        current[0] = previous

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **constexprs: launched.append((current[0], grid, args, constexprs))

    launched = []
    monkeypatch.setattr(torch.cuda, "device", switch)
    patch_triton._launch(Kernel(), torch.device("cuda", 1), (4, 3), (1, 2), {"LINES": 16})
    assert launched == [("cuda:1", (4, 3), (1, 2), {"LINES": 16})] and current == ["cuda:0"]


def test_deterministic_mode_runs_the_backward_of_a_triton_forward_on_the_pytorch_path(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the Triton forward (deterministic) stays and
    the backward of an "auto" Triton forward runs the PyTorch path (its index_add_ is
    deterministic on CUDA in that mode); an explicit "triton" backward is refused (a warning with
    warn_only=True). "auto" picks Triton on CUDA only, so it is made to pick it here (on a GPU,
    see TRITON_DEVICE, it would anyway)."""
    from dart_core.kernels import patch_function

    monkeypatch.setattr(patch_function, "resolve_backend", lambda device, backend: "triton")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # on a GPU: deterministic torch.mm in the PyTorch backward
    used = []
    backward = patch_function.patch_sample_backward_op

    def recorded(*args):
        used.append(args[6])
        return backward(*args)

    monkeypatch.setattr(patch_function, "patch_sample_backward_op", recorded)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64).to(TRITON_DEVICE)
    line_y = (torch.rand(2, 2, 3, generator=g, dtype=torch.float64) * 7).to(TRITON_DEVICE).requires_grad_()
    sample_x = (torch.rand(2, 4, 3, generator=g, dtype=torch.float64) * 15).to(TRITON_DEVICE).requires_grad_()

    def gradients(backend):
        patches = sample_strip_patches(images, line_y, sample_x, backend)
        return torch.autograd.grad(patches.square().sum(), (line_y, sample_x))

    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        free = gradients("auto")
        torch.use_deterministic_algorithms(True)
        deterministic = gradients("auto")
        with pytest.raises(RuntimeError, match="atomics, which is not deterministic"):
            gradients("triton")
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="atomics, which is not deterministic"):
            gradients("triton")
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    assert used == ["triton", "torch", "triton"]
    for got, want in zip(deterministic, free, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_deterministic_mode_leaves_the_forward_on_triton():
    """Only the Triton backward is nondeterministic: in deterministic mode CUDA tensors still get
    the Triton forward, for "auto" and for an explicit "triton" (inference stays fast)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert resolve_backend(torch.device("cuda"), "auto") == "triton"
        assert resolve_backend(torch.device("cuda"), "triton") == "triton"
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def test_patch_sample_takes_the_six_arguments_it_took_before():
    """``requested`` is optional: PatchSample.apply with six inputs runs and differentiates."""
    from dart_core.kernels import PatchSample

    images = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    line_top = torch.zeros(1, 1, 2, dtype=torch.long)
    line_frac = torch.full((1, 1, 2), 0.25, dtype=torch.float64, requires_grad=True)
    sample_left = torch.tensor([[0, 1]])
    sample_frac = torch.full((1, 2), 0.5, dtype=torch.float64, requires_grad=True)
    patches = PatchSample.apply(images, line_top, line_frac, sample_left, sample_frac, "torch")
    grads = torch.autograd.grad(patches.sum(), (line_frac, sample_frac))
    assert patches.shape == (1, 1, 1, 2, 2) and all(g is not None for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_interval_averages_of_low_precision_values_are_rounded_once(dtype):
    """bf16/fp16 values on a long strip: the integrals, their differences and the widths are
    computed in float32 and the average rounded once to the values' dtype (differences of bf16
    running integrals near 700 would have lost the whole answer)."""
    from dart_core.intervals import interval_average, interval_integral

    g = torch.Generator().manual_seed(6)
    values = (torch.rand(1, 784, 4, generator=g) + 0.5).to(dtype)
    edges = torch.tensor([[700.25, 701.25, 702.75, 783.5]])
    exact = interval_average(values.double(), edges.double(), lambda w: w.clamp(min=1e-6))
    got = interval_average(values, edges, lambda w: w.clamp(min=1e-6))
    assert got.dtype == dtype
    ulp = torch.finfo(dtype).eps  # one unit in the last place: the exact answer rounded, give or take a tie
    torch.testing.assert_close(got.double(), exact, rtol=ulp, atol=0)
    integral = interval_integral(values, edges)
    torch.testing.assert_close(integral.double(), interval_integral(values.double(), edges.double()), rtol=ulp, atol=0)
