"""dart_dense's regular-grid warp against independent oracles (np.interp + grid_sample), math identities
(forward∘inverse = identity, uniform scores = plain resize) and gradcheck."""

import hypothesis.strategies as st
import numpy as np
import pytest
import reference_dart as ref
import torch
import torch.nn.functional as F
from dart_core.scorers import build_scorer
from dart_dense import DartWarp, GridWarp
from dart_dense.preprocessor import image_sizes
from dart_dense.warper import build_warp
from host_syncs import HostSyncs
from hypothesis import given, settings
from test_dense_support import single_thread  # noqa: F401  (autouse fixture)


def random_scores(batch, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, h, w, generator=g, dtype=torch.float64) ** 3 + 0.05


def reference_knots(scores, image_sizes, grid, cell):
    """Per sample, the (original, warped) knots of both axes from the slow reference quantiles."""
    out = []
    for b in range(scores.shape[0]):
        pdf = scores[b] / scores[b].sum()
        axes = []
        for axis, dim in ((0, 1), (1, 0)):
            m = pdf.sum(dim)
            m = m / (m.sum() + 1e-8)
            edges = ref.quantiles(m, grid[axis]) / m.shape[0] * float(image_sizes[b][axis])
            axes.append((edges.numpy(), np.arange(grid[axis] + 1) * cell))
        out.append(axes)
    return out


def oracle_warp(images, scores, image_sizes, grid, cell):
    """One grid_sample per image on its own valid crop, grid from np.interp of the inverse map."""
    knots = reference_knots(scores, image_sizes, grid, cell)
    out = []
    for b, (H, W) in enumerate(image_sizes):
        (ky, wy), (kx, wx) = knots[b]
        ys = np.interp(np.arange(grid[0] * cell) + 0.5, wy, ky)
        xs = np.interp(np.arange(grid[1] * cell) + 0.5, wx, kx)
        gy, gx = np.meshgrid(2 * ys / H - 1, 2 * xs / W - 1, indexing="ij")
        g = torch.from_numpy(np.stack([gx, gy], -1))[None]
        crop = images[b : b + 1, :, :H, :W]
        out.append(F.grid_sample(crop, g, mode="bilinear", padding_mode="border", align_corners=False))
    return torch.cat(out)


def oracle_unwarp(maps, scores, image_sizes, grid, cell):
    knots = reference_knots(scores, image_sizes, grid, cell)
    out = []
    R, C = grid[0] * cell, grid[1] * cell
    for b, (H, W) in enumerate(image_sizes):
        (ky, wy), (kx, wx) = knots[b]
        vs = np.interp(np.arange(H) + 0.5, ky, wy)
        us = np.interp(np.arange(W) + 0.5, kx, wx)
        gy, gx = np.meshgrid(2 * vs / R - 1, 2 * us / C - 1, indexing="ij")
        g = torch.from_numpy(np.stack([gx, gy], -1))[None]
        out.append(F.grid_sample(maps[b : b + 1], g, mode="bilinear", padding_mode="border", align_corners=False))
    return out


@pytest.mark.parametrize("grid,cell,sizes", [((3, 4), 5, [(23, 31), (23, 31)]), ((2, 2), 7, [(9, 40), (30, 11)])])
def test_warp_image_matches_oracle(grid, cell, sizes):
    scores = random_scores(len(sizes), 5, 6, seed=3)
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.randn(len(sizes), 2, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    warp = GridWarp.from_scores(scores, torch.tensor(sizes), grid, cell)
    got = warp.warp_image(images)
    assert got.shape == (len(sizes), 2, grid[0] * cell, grid[1] * cell)
    torch.testing.assert_close(got, oracle_warp(images, scores, sizes, grid, cell), rtol=0, atol=1e-9)


def test_unwarp_map_matches_oracle_and_accepts_any_map_resolution():
    sizes = [(21, 17), (12, 30)]
    grid, cell = (3, 2), 8
    scores = random_scores(2, 4, 4, seed=5)
    warp = GridWarp.from_scores(scores, torch.tensor(sizes), grid, cell)
    # full resolution, a stride-4 logit map, and strides 2 along y and 1 along x
    for map_size in [(24, 16), (6, 4), (12, 16)]:
        maps = torch.randn(2, 3, *map_size, dtype=torch.float64)
        got = warp.unwarp_map(maps)
        assert got.shape == (2, 3, 21, 30)
        for b, want in enumerate(oracle_unwarp(maps, scores, sizes, grid, cell)):
            H, W = sizes[b]
            torch.testing.assert_close(got[b : b + 1, :, :H, :W], want, rtol=0, atol=1e-9)


def test_nearest_unwarp_of_a_half_resolution_label_map_replicates_pixels():
    """With the identity warp (image size = canvas size), a label map at stride 2 comes back with
    each label covering its 2 × 2 pixels: nearest rounds to the closest source pixel, it does not floor."""
    warp = GridWarp.uniform(torch.tensor([[16, 24]]), (2, 3), 8)
    labels = torch.randint(0, 9, (1, 1, 8, 12), generator=torch.Generator().manual_seed(0))
    back = warp.unwarp_map(labels, mode="nearest")
    assert torch.equal(back, labels.repeat_interleave(2, 2).repeat_interleave(2, 3))


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 6), w=st.integers(1, 6), rows=st.integers(1, 6), cols=st.integers(1, 6),
    cell=st.integers(1, 16), height=st.integers(1, 200), width=st.integers(1, 200), seed=st.integers(0, 10**6),
)
def test_points_round_trip_exactly(h, w, rows, cols, cell, height, width, seed):
    scores = random_scores(2, h, w, seed=seed)
    sizes = torch.tensor([[height, width], [max(1, height // 2), width]])
    warp = GridWarp.from_scores(scores, sizes, (rows, cols), cell)
    g = torch.Generator().manual_seed(seed)
    points = (torch.rand(2, 50, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2) * torch.tensor([width, height])
    back = warp.points_to_original(warp.points_to_warped(points))
    torch.testing.assert_close(back, points, rtol=0, atol=1e-9 * max(height, width))
    warped = torch.rand(2, 50, 2, generator=g, dtype=torch.float64) * torch.tensor([cols * cell, rows * cell])
    torch.testing.assert_close(warp.points_to_warped(warp.points_to_original(warped)), warped, rtol=0, atol=1e-9 * cell * 6)
    # Image corners go to canvas corners; the maps are monotone, so boxes stay ordered.
    corners = torch.tensor([[[0.0, 0.0], [width, sizes[0, 0]]], [[0.0, 0.0], [width, sizes[1, 0]]]], dtype=torch.float64)
    torch.testing.assert_close(warp.points_to_warped(corners)[:, 1], torch.tensor([cols * cell, rows * cell]).double().expand(2, 2),
                               rtol=0, atol=1e-9 * cell * 6)
    boxes = torch.cat([points[:, :25], points[:, 25:]], -1)
    boxes = torch.cat([torch.minimum(boxes[..., :2], boxes[..., 2:]), torch.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    wb = warp.boxes_to_warped(boxes)
    assert bool((wb[..., 2:] >= wb[..., :2]).all())
    torch.testing.assert_close(warp.boxes_to_original(wb), boxes, rtol=0, atol=1e-9 * max(height, width))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_scores_are_identity_and_plain_resize(dtype):
    images = torch.rand(2, 3, 24, 32, dtype=dtype)
    sizes = torch.tensor([[24, 32], [24, 32]])
    ones = torch.ones(2, 5, 7, dtype=dtype)
    identity = GridWarp.from_scores(ones, sizes, (3, 4), 8)
    # The 1e-8 guards of step 2 move boundaries by ~1e-6 of a cell.
    assert (identity.warp_image(images) - images).abs().max() < 1e-4
    pts = torch.rand(2, 20, 2, dtype=torch.float64) * 24
    assert (identity.points_to_warped(pts) - pts).abs().max() < 1e-4
    resize = GridWarp.from_scores(ones, sizes, (5, 3), 4)
    want = F.interpolate(images, size=(20, 12), mode="bilinear", align_corners=False)
    assert (resize.warp_image(images) - want).abs().max() < 1e-4
    exact = GridWarp.uniform(sizes, (5, 3), 4).warp_image(images)
    torch.testing.assert_close(exact, want, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=1e-6)


def test_padding_never_leaks_into_a_smaller_image():
    scores = random_scores(2, 4, 4, seed=9)
    small = torch.rand(1, 3, 10, 14, dtype=torch.float64)
    padded = torch.full((2, 3, 20, 20), 1e6, dtype=torch.float64)
    padded[0, :, :10, :14] = small[0]
    warp = GridWarp.from_scores(scores, torch.tensor([[10, 14], [20, 20]]), (2, 3), 4)
    alone = GridWarp.from_scores(scores[:1], torch.tensor([[10, 14]]), (2, 3), 4)
    torch.testing.assert_close(warp.warp_image(padded)[:1], alone.warp_image(small), rtol=0, atol=0)


def test_objects_land_where_they_are():
    """A box predicted on the warped image, warped back, covers the object in the original image."""
    H, W = 40, 60
    scores = torch.full((1, 8, 8), 0.1, dtype=torch.float64)
    scores[0, 2:4, 5:7] = 5.0  # dense region: gets most rows/columns
    warp = GridWarp.from_scores(scores, torch.tensor([[H, W]]), (4, 4), 8)
    obj = torch.tensor([[[41.0, 12.0, 50.0, 19.0]]], dtype=torch.float64)
    warped_box = warp.boxes_to_warped(obj)
    # The dense region is magnified: the object covers much more of the canvas than of the image.
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    assert area(warped_box) / (32 * 32) > 3 * area(obj) / (H * W)
    # A mask that is 1 inside the warped box, resampled back, is 1 inside the object and 0 away from it.
    v = torch.arange(32, dtype=torch.float64) + 0.5
    inside = ((v[:, None] > warped_box[0, 0, 1]) & (v[:, None] < warped_box[0, 0, 3])
              & (v[None] > warped_box[0, 0, 0]) & (v[None] < warped_box[0, 0, 2]))
    back = warp.unwarp_map(inside[None, None].to(torch.uint8), mode="nearest")[0, 0]  # an integer mask
    y, x = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    core = (x > 42) & (x < 49) & (y > 13) & (y < 18)
    far = (x < 39) | (x > 52) | (y < 10) | (y > 21)
    assert bool(back[core].eq(1).all()) and bool(back[far].eq(0).all())


def test_gradcheck_image_and_scores():
    scores = random_scores(1, 3, 3, seed=2).requires_grad_()
    images = torch.randn(1, 1, 7, 9, dtype=torch.float64, requires_grad=True)
    sizes = torch.tensor([[7, 9]])

    def warp_fn(img, s):
        return GridWarp.from_scores(s, sizes, (2, 3), 3).warp_image(img)

    def unwarp_fn(maps, s):
        return GridWarp.from_scores(s, sizes, (2, 2), 3).unwarp_map(maps)

    assert torch.autograd.gradcheck(warp_fn, (images, scores))
    maps = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unwarp_fn, (maps, scores))
    pts = torch.rand(1, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, s: GridWarp.from_scores(s, sizes, (2, 3), 3).points_to_original(p), (pts * 6, scores)
    )


def test_dart_warp_module_trains_the_scorer_and_baseline_has_no_scorer():
    torch.manual_seed(0)
    scorer = build_scorer("mobilenetv3_small_050", grid_size=(4, 4))
    # 128: a 4 × 4 feature map (at 32 it is 1 × 1, a constant score map whose standardised
    # gradient is exactly zero: only rounding noise reached the head then)
    module = DartWarp((3, 3), 8, scorer=scorer, score_input_size=(128, 128))
    images = torch.rand(2, 3, 30, 40)
    warped, warp = module(images, torch.tensor([[30, 40], [20, 33]]))
    assert warped.shape == (2, 3, 24, 24) and warp.grid == (3, 3)
    warped.square().mean().backward()
    grads = [p.grad for p in scorer.head.parameters()]
    assert all(g is not None for g in grads) and max(g.abs().sum() for g in grads) > 1.0  # a signal, not rounding
    baseline = DartWarp((3, 3), 8)
    out, _ = baseline(images, torch.tensor([[30, 40], [30, 40]]))
    torch.testing.assert_close(out, F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False))


def test_bad_input_is_named():
    warp = GridWarp.uniform(torch.tensor([[10, 10]]), (2, 2), 4)
    with pytest.raises(ValueError, match="points must be"):
        warp.points_to_warped(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="smaller than the largest image size"):
        warp.warp_image(torch.zeros(1, 3, 8, 10))
    with pytest.raises(ValueError, match="images must be"):
        warp.warp_image(torch.zeros(2, 3, 10, 10))
    with pytest.raises(ValueError, match="image_sizes"):
        GridWarp.from_scores(torch.ones(2, 3, 3), torch.tensor([[10, 10]]), (2, 2), 4)


@pytest.mark.parametrize("scorer", [None, dict(backbone="mobilenet_v3_small", version="v1", grid_size=(4, 4))])
def test_the_warp_reads_no_value_back_from_the_images_device(scorer):
    """Image sizes are host metadata: checked on the CPU and copied to the device once, so the
    warp, its image check and unwarp's default size never read a GPU value back (a sync per
    read). The meta device stands in for the GPU: any read of one of its values raises."""
    warper = build_warp(grid=(4, 4), cell_size=8, scorer=scorer).to("meta")
    sizes = image_sizes([dict(img_shape=(40, 48)), dict(img_shape=(32, 40))])
    images = torch.empty(2, 3, 40, 48, device="meta")
    warper(images, sizes)  # a scorer folds once
    with HostSyncs("meta") as watch:
        warped, warp = warper(images, sizes)
    assert sum(watch.found.values()) == 1, dict(watch.found)  # the sizes, copied to the device once
    assert [key.split(" at ")[0] for key in watch.found] == ["a copy from host memory to the device"]
    assert warped.shape == (2, 3, 32, 32) and warp.image_sizes.device.type == "meta"
    assert warp.unwarp_map(torch.empty(2, 5, 8, 8, device="meta")).shape == (2, 5, 40, 48)
    assert warp.select(1).unwarp_map(torch.empty(1, 5, 8, 8, device="meta")).shape == (1, 5, 32, 40)
    with pytest.raises(ValueError, match="smaller than the largest image size"):
        warp.warp_image(torch.empty(2, 3, 36, 48, device="meta"))


def test_a_warp_checks_its_host_copy_of_the_sizes_and_selects_from_the_end():
    warp = GridWarp.uniform(torch.tensor([[40, 48], [32, 40]]), (4, 4), 8)
    assert warp.host_sizes is not None and torch.equal(warp.host_sizes, warp.image_sizes)
    with pytest.raises(ValueError, match="host_sizes must be the CPU copy of image_sizes"):
        GridWarp(warp.row_edges, warp.col_edges, warp.image_sizes, 8, warp.host_sizes[:1])
    last = warp.select(-1)
    assert last.batch_size == 1 and last.host_sizes.tolist() == [[32.0, 40.0]]
    assert last.unwarp_map(torch.zeros(1, 2, 4, 4)).shape == (1, 2, 32, 40)
    with pytest.raises(IndexError, match="sample 2 is out of range"):
        warp.select(2)
    scores = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="image_sizes must be their"):
        GridWarp.from_scores(scores, [[40, 48], [32, 40]], (4, 4), 8, host_sizes=warp.host_sizes)
    with pytest.raises(ValueError, match="disagree"):
        GridWarp.from_scores(scores, torch.tensor([[99, 99], [32, 40]]), (4, 4), 8, host_sizes=warp.host_sizes)
