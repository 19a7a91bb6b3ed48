"""Partition pictures (dart_core.visualize) and the ``dart-core visualize`` command (dart_core.cli)."""

import os
import runpy
import sys

import numpy as np
import pytest
import timm
import torch
from dart_core import Partition, cli, partition, sample_patches
from dart_core.cli import DEFAULT_MODEL, build_model, main
from dart_core.visualize import (
    NONFINITE_COLOR,
    colormap,
    draw_partition,
    heatmap,
    image_grid,
    partition_overview,
    patch_mosaic,
    save_partition_png,
    to_pil,
    token_pieces,
    wrap_caption,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
# These tests use randomly initialised frozen scorer backbones on purpose (dart_core.scorers warns).
pytestmark = pytest.mark.filterwarnings("ignore:the DART scorer's backbone is frozen but randomly initialised")


def make_partition(row_edges, token_edges, grid=(2, 2)):
    rows = torch.tensor(row_edges, dtype=torch.float64)
    tokens = torch.tensor(token_edges, dtype=torch.float64)
    rows, tokens = (rows[None], tokens[None]) if rows.dim() == 1 else (rows, tokens)
    density = torch.full((rows.shape[0], *grid), 1.0 / (grid[0] * grid[1]), dtype=torch.float64)
    return Partition(row_edges=rows, token_edges=tokens, density=density)


def expected_boundary_mask(row_edges, token_edges, height, width):
    """Independent oracle: the pixels a 1-px drawing of the interior boundaries covers.

    Row boundary f: pixel row round(f·H). Token edge e inside row r (r < e < r + 1): column
    round((e - r)·W) from row r's top line to its bottom line; an integer edge k < R is the left
    border (column 0) of row k.
    """
    mask = np.zeros((height, width), dtype=bool)
    lines = [min(round(f * height), height - 1) for f in row_edges]
    for y in lines[1:-1]:
        mask[y, :] = True
    num_rows = len(row_edges) - 1
    for e in token_edges[1:-1]:
        for r in range(num_rows):
            if r < e < r + 1:
                column = min(round((e - r) * width), width - 1)
            elif e == r:
                column = 0
            else:
                continue
            mask[lines[r]:lines[r + 1] + 1, column] = True
    return mask


def drawn_mask(row_edges, token_edges, height, width, index=0):
    part = make_partition(row_edges, token_edges)
    blank = np.zeros((height, width, 3), dtype=np.uint8)
    picture = draw_partition(blank, part, index=index, shade=False, line_color=WHITE)
    assert picture.size == (width, height)
    return np.asarray(picture).all(-1)


def test_boundaries_land_where_the_partition_says_hand_made():
    # Three rows; an exact-integer token edge (1.0: start of row 1); a token straddling rows 1-2.
    rows = [0.0, 0.3, 0.55, 1.0]
    tokens = [0.0, 0.213, 0.66, 1.0, 1.38, 1.92, 2.4, 3.0]
    height, width = 40, 50
    mask = drawn_mask(rows, tokens, height, width)
    np.testing.assert_array_equal(mask, expected_boundary_mask(rows, tokens, height, width))
    # Spot checks by hand: row lines at y = 0.3·40 = 12 and 0.55·40 = 22; edge 0.66 → column 33.
    assert mask[12].all() and mask[22].all() and not mask[5].all()
    assert mask[0:13, 33].all() and not mask[14:22, 33].any()
    assert mask[12:23, 0].all()  # the integer edge 1.0 is the left border of row 1
    assert mask[22:40, 20].all() and mask[22:40, 0].sum() == 1  # 2.4 → column 20 in row 2 only


def test_boundaries_land_where_the_partition_says_random_scores():
    torch.manual_seed(0)
    scores = torch.rand(2, 5, 6) ** 3 + 0.01
    part = partition(scores, num_rows=4, num_tokens=17)
    height, width = 61, 83
    for index in range(2):
        rows = part.row_edges[index].tolist()
        tokens = part.token_edges[index].tolist()
        mask = np.asarray(draw_partition(np.zeros((height, width, 3), np.uint8), part, index=index, shade=False)).all(-1)
        np.testing.assert_array_equal(mask, expected_boundary_mask(rows, tokens, height, width))


def test_straddling_token_is_drawn_in_both_rows():
    part = make_partition([0.0, 0.5, 1.0], [0.0, 0.6, 1.3, 2.0])
    pieces = token_pieces(part)
    assert [piece[:2] for piece in pieces] == [(0, 0), (1, 0), (1, 1), (2, 1)]
    np.testing.assert_allclose([piece[2:] for piece in pieces], [(0.0, 0.6), (0.6, 1.0), (0.0, 0.3), (0.3, 1.0)], atol=1e-12)
    palette = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    picture = np.asarray(draw_partition(np.zeros((20, 100, 3), np.uint8), part, palette=palette, shade_alpha=1.0))
    assert tuple(picture[5, 30]) == palette[0]
    assert tuple(picture[5, 80]) == palette[1] and tuple(picture[15, 15]) == palette[1]  # token 1 in rows 0 and 1
    assert tuple(picture[15, 65]) == palette[2]
    # A token ending exactly at a row end has one piece, and the next starts the next row.
    exact = make_partition([0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.5, 2.0])
    assert [piece[:2] for piece in token_pieces(exact)] == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_heatmap_colours_follow_the_scores():
    scores = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    picture = np.asarray(heatmap(np.zeros((40, 60, 3), np.uint8), scores, alpha=1.0, smooth=False))
    viridis_low, viridis_mid, viridis_high = (68, 1, 84), (33, 145, 140), (253, 231, 37)
    assert tuple(picture[10, 15]) == viridis_low  # cell (0, 0): the minimum
    assert tuple(picture[30, 45]) == viridis_high  # cell (1, 1): the maximum
    assert tuple(picture[10, 45]) == viridis_mid  # cell (0, 1): 3 is halfway between 1 and 5
    blended = np.asarray(heatmap(np.full((40, 60, 3), 100, np.uint8), scores[0], alpha=0.5, smooth=False))
    np.testing.assert_allclose(blended[10, 15], (np.array(viridis_low) + 100) / 2, atol=1)
    assert colormap(np.array([-1.0, 2.0])).tolist() == [list(viridis_low), list(viridis_high)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_painted_in_a_fixed_colour(bad):
    """A NaN / ±inf score cell (a broken image) is drawn as a NONFINITE_COLOR block; the other
    cells keep the colours of the finite cells' range (oracle: the same map with the broken cell
    left out of the range, i.e. set to a value inside it)."""
    scores = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, bad], [1.0, 5.0]]])
    blank = np.zeros((40, 60, 3), np.uint8)
    picture = np.asarray(heatmap(blank, scores, index=1, alpha=1.0, smooth=False))
    assert (picture[:20, 30:] == NONFINITE_COLOR).all()  # cell (0, 1), the broken one
    expected = np.asarray(heatmap(blank, torch.tensor([[4.0, 4.0], [1.0, 5.0]]), alpha=1.0, smooth=False))
    assert np.array_equal(picture[:, :30], expected[:, :30]) and np.array_equal(picture[20:], expected[20:])
    part = partition(torch.ones(2, 2, 2), num_tokens=4)
    drawn = np.asarray(draw_partition(blank, part, index=1, scores=scores, shade=False, heat_alpha=1.0))
    assert (drawn[:19, 31:59] == NONFINITE_COLOR).all()  # away from the boundary lines
    smooth = np.asarray(heatmap(blank, scores, index=1, alpha=1.0))  # bilinear: no NaN reaches the colours
    assert (smooth[:20, 30:] == NONFINITE_COLOR).all()
    assert (np.asarray(heatmap(blank, torch.full((2, 2), bad), alpha=1.0)) == NONFINITE_COLOR).all()
    with pytest.raises(ValueError, match="colormap needs finite values"):
        colormap(np.array([0.5, bad]))


def test_to_pil_undoes_normalisation_and_checks_shapes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor = (torch.from_numpy(image).permute(2, 0, 1).double() / 255 - torch.tensor(mean).view(3, 1, 1)) \
        / torch.tensor(std).view(3, 1, 1)
    batch = torch.stack([torch.zeros_like(tensor), tensor])
    np.testing.assert_array_equal(np.asarray(to_pil(batch, index=1, mean=mean, std=std)), image)
    grey = np.asarray(to_pil(image[..., 0]))
    np.testing.assert_array_equal(grey, np.repeat(image[..., :1], 3, axis=-1))
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        to_pil(np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        to_pil(torch.zeros(4, 4))


def test_mosaic_of_a_uniform_partition_is_the_image():
    h, w, patch = 3, 4, 5
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(h * patch, w * patch, 3), dtype=np.uint8)
    images = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255
    part = partition(torch.ones(1, h, w), num_rows=h, num_tokens=h * w)
    patches = sample_patches(images, part, patch)
    mosaic = patch_mosaic(patches, columns=w, gap=0)
    np.testing.assert_array_equal(np.asarray(mosaic), image)


def test_mosaic_layout_is_row_major_near_square():
    patches = torch.stack([torch.full((3, 2, 2), k * 50 / 255, dtype=torch.float64) for k in range(5)])  # (N=5, C, P, P)
    mosaic = np.asarray(patch_mosaic(patches, gap=1, background=(255, 0, 255)))
    assert mosaic.shape == (2 * 2 + 1, 3 * 2 + 2, 3)  # ceil(sqrt 5) = 3 columns, 2 rows
    for k in range(5):
        top, left = (k // 3) * 3, (k % 3) * 3
        assert (mosaic[top:top + 2, left:left + 2] == k * 50).all()
    assert tuple(mosaic[3, 7 - 1]) == (255, 0, 255)  # the unused sixth cell
    with pytest.raises(ValueError, match=r"\(B, N, C, P, P\)"):
        patch_mosaic(torch.zeros(2, 3, 4, 5))


def test_image_grid_places_pictures_and_captions():
    red = Image.new("RGB", (10, 6), (255, 0, 0))
    blue = np.zeros((8, 5, 3), np.uint8)
    blue[..., 2] = 255
    grid = np.asarray(image_grid([red, blue], captions=["red", "blue"], pad=2))
    assert grid.shape[1] == 2 + 2 * (10 + 2)
    assert (grid[2:8, 2:12] == (255, 0, 0)).all()
    assert (grid[2:10, 14:19] == (0, 0, 255)).all()
    assert (grid[8:10, 2:12] == 255).all()  # below the shorter picture: background
    caption_band = grid[11:-2, 2:12]
    assert (caption_band < 128).any()  # the caption's text is drawn
    with pytest.raises(ValueError, match="2 captions for 1 images"):
        image_grid([red], captions=["a", "b"])


def test_save_partition_png_writes_the_drawing(tmp_path):
    part = make_partition([0.0, 0.5, 1.0], [0.0, 0.6, 1.3, 2.0])
    image = np.full((20, 30, 3), 90, np.uint8)
    scores = torch.rand(1, 2, 2)
    path = tmp_path / "sub" / "p.png"
    picture = save_partition_png(path, image, part, scores=scores)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(picture))
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    import skimage.data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return str(path)


def test_cli_visualize_end_to_end(astronaut_png, tmp_path, capsys):
    out = tmp_path / "astronaut_dart.png"
    assert main(["visualize", astronaut_png, "--out", str(out), "--num-tokens", "100", "--mosaic"]) == 0
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.mode == "RGB"
    assert picture.width == 4 + 3 * (448 + 4)  # heat map, partition and mosaic panels of a 448 input
    err = capsys.readouterr().err
    assert "100 tokens in 10 rows on a 448x448 input" in err and str(out) in err
    # The partition panel differs from the heat map panel (lines and tints were drawn).
    pixels = np.asarray(picture)
    assert not np.array_equal(pixels[4:452, 4:452], pixels[4:452, 456:904])


def test_cli_loads_a_checkpoint(astronaut_png, tmp_path, capsys, monkeypatch):
    source = build_model(DEFAULT_MODEL)
    checkpoint = tmp_path / "ours.pth"
    torch.save({"model": source.state_dict()}, checkpoint)
    built = []
    monkeypatch.setattr(cli, "build_model", lambda *args: built.append(build_model(*args)) or built[-1])
    out = tmp_path / "from_checkpoint.png"
    assert main(["visualize", astronaut_png, "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert Image.open(out).width == 4 + 2 * (448 + 4)
    loaded = built[0].state_dict()
    for key, value in source.state_dict().items():  # a fresh model has other random weights
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in source.state_dict().items() if k != "head.weight"}, broken)
    assert main(["visualize", astronaut_png, "--checkpoint", str(broken), "--out", str(out)]) == 1
    assert "missing keys (1): head.weight" in capsys.readouterr().err


def test_cli_builds_the_model_a_pretrain_checkpoint_describes(tmp_path, capsys, monkeypatch):
    """A ``tools/pretrain_in1k.py`` checkpoint (2 classes, depth 1, 64 tokens, v2 scorer) is
    visualised with a model built from its stored name, options and classifier size."""
    torch.manual_seed(0)
    options = dict(depth=1, num_classes=2, num_tokens=64, scorer_version="v2")
    source = timm.create_model(DEFAULT_MODEL, **options)
    checkpoint = tmp_path / "last.pth"
    args = {"model": DEFAULT_MODEL, "model_kwargs": {"depth": 1}, "num_tokens": 64, "scorer": None,
            "scorer_weights": "/elsewhere/mnv3.pth", "scorer_version": "v2", "lr": 0.1}
    torch.save({"format": "dart-pretrain-1", "model_name": DEFAULT_MODEL, "model": source.state_dict(),
                "optimizer": {}, "epoch": 3, "classes": ["a", "b"], "args": args}, checkpoint)
    image = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    built = []
    monkeypatch.setattr(cli, "build_model", lambda *a: built.append(build_model(*a)) or built[-1])
    out = tmp_path / "out.png"
    assert main(["visualize", str(image), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert "64 tokens in 8 rows" in capsys.readouterr().err
    loaded = built[0].state_dict()
    assert list(loaded) == list(source.state_dict())
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert built[0].patch_embed.num_tokens == 64 and built[0].head.out_features == 2
    assert main(["visualize", str(image), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--num-tokens", "36"]) == 0  # the command line's budget wins
    assert built[1].patch_embed.num_tokens == 36
    other = "vim_tiny_dart_patch16_224"
    assert main(["visualize", str(image), "--checkpoint", str(checkpoint), "--model", other]) == 1
    assert f"holds a '{DEFAULT_MODEL}' model, not '{other}'" in capsys.readouterr().err


class Untrusted:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_cli_errors_are_clear(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["visualize", str(missing)]) == 1
    assert f"image file not found: {missing}" in capsys.readouterr().err
    text = tmp_path / "text.png"
    text.write_text("not an image")
    assert main(["visualize", str(text)]) == 1
    assert "is not an image Pillow can read" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert main(["visualize", str(tmp_path / "ok.png"), "--model", "resnet18"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'resnet18'" in err and DEFAULT_MODEL in err
    assert main(["visualize", str(tmp_path / "ok.png"), "--checkpoint", str(tmp_path / "none.pth")]) == 1
    assert "checkpoint file not found" in capsys.readouterr().err
    torch.save({"model": {}, "extra": Untrusted()}, tmp_path / "evil.pth")
    assert main(["visualize", str(tmp_path / "ok.png"), "--checkpoint", str(tmp_path / "evil.pth")]) == 1
    err = capsys.readouterr().err
    assert "holds builtins.print; dart-core loads checkpoints weights-only" in err
    assert "extra_safe_globals" not in err
    assert not os.path.exists("ok_dart.png")


def test_python_dash_m_runs_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m dart_core", "visualize", str(tmp_path / "missing.jpg")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("dart_core", run_name="__main__")
    assert exit_info.value.code == 1
    assert "dart-core: error: image file not found" in capsys.readouterr().err


def test_cli_feeds_a_checkpoint_the_input_size_its_model_was_built_for(tmp_path, capsys):
    """A DeiT-DART trained at 224 (``--model-kwargs '{img_size: 224}'``): timm's pretrained config
    says 448, the model's tokenizer takes 224 only."""
    source = timm.create_model(DEFAULT_MODEL, depth=1, num_classes=2, img_size=224)
    checkpoint = tmp_path / "last.pth"
    args = {"model": DEFAULT_MODEL, "model_kwargs": {"depth": 1, "img_size": 224}}
    torch.save({"format": "dart-pretrain-1", "model_name": DEFAULT_MODEL, "model": source.state_dict(),
                "classes": ["a", "b"], "args": args}, checkpoint)
    image = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    assert main(["visualize", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o.png")]) == 0, \
        capsys.readouterr().err
    assert "on a 224x224 input" in capsys.readouterr().err


# ---------------------------------------------------------------- captions on small panels (user review)


def caption_boxes(grid, panel_sizes, columns=None, pad=4, background=WHITE):
    """Independent check of an ``image_grid`` layout from its pixels alone: the ink box (x0, y0,
    x1, y1) of each caption. Cells are as wide as the widest panel (asserted from the picture's
    width) and share the height left over; the ink outside the panels must lie in caption k's
    band (below panel k, inside cell k), and every caption has some."""
    count = len(panel_sizes)
    columns = columns or count
    rows = -(-count // columns)
    cell_w = max(w for w, _ in panel_sizes)
    assert grid.shape[1] == pad + columns * (cell_w + pad)  # no caption widens its column
    cell_h = (grid.shape[0] - pad) // rows - pad
    assert grid.shape[0] == pad + rows * (cell_h + pad)
    ink = (grid != background).any(axis=-1)
    corners = [(pad + (k % columns) * (cell_w + pad), pad + (k // columns) * (cell_h + pad)) for k in range(count)]
    for (left, top), (w, h) in zip(corners, panel_sizes, strict=True):
        ink[top:top + h, left:left + w] = False
    boxes, inside = [], 0
    for k, ((left, top), (_, h)) in enumerate(zip(corners, panel_sizes, strict=True)):
        band = ink[top + h:top + cell_h, left:left + cell_w]
        ys, xs = np.nonzero(band)
        assert xs.size, f"caption {k} left no ink in its band"
        boxes.append((left + xs.min(), top + h + ys.min(), left + xs.max() + 1, top + h + ys.max() + 1))
        inside += int(band.sum())
    assert inside == int(ink.sum()), "caption ink outside its own cell: it overlaps a neighbour or runs past"
    for a in range(count):
        for b in range(a + 1, count):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"captions {a} and {b} intersect"
    return boxes


def darkness(pixels):
    """Total ink of black text on white: the sum of (255 - grey) over the pixels."""
    return float((255 - np.asarray(pixels, dtype=np.float64).mean(axis=-1)).sum())


LONG_CAPTIONS = ["scores (blue low, yellow high) and a rather long-winded explanation of the colours",
                 "partition: 14 rows, 196 tokens; jagged fjords",
                 "sampled patches, row-major, supercalifragilisticexpialidocious"]


@pytest.mark.parametrize("size", [32, 64, 224])
@pytest.mark.parametrize("columns", [None, 2])
def test_image_grid_captions_stay_in_their_cells(size, columns):
    rng = np.random.default_rng(size)
    panels = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in LONG_CAPTIONS]
    grid = np.asarray(image_grid(panels, LONG_CAPTIONS, columns=columns))
    boxes = caption_boxes(grid, [(size, size)] * len(panels), columns=columns)
    per_row = columns or len(panels)
    cell_h = (grid.shape[0] - 4) // -(-len(panels) // per_row) - 4
    for k, panel in enumerate(panels):  # the panels are pasted unchanged
        left, top = 4 + (k % per_row) * (size + 4), 4 + (k // per_row) * (cell_h + 4)
        np.testing.assert_array_equal(grid[top:top + size, left:left + size], panel)
    # Nothing is dropped: each caption's wrapped ink weighs what the caption drawn on one line does.
    font = ImageFont.load_default(size=14)
    for caption, (x0, y0, x1, y1) in zip(LONG_CAPTIONS, boxes, strict=True):
        line = Image.new("RGB", (2000, 40), WHITE)
        ImageDraw.Draw(line).text((5, 5), caption, fill=BLACK, font=font)
        assert darkness(grid[y0:y1, x0:x1]) == pytest.approx(darkness(line), rel=0.05)


def test_partition_overview_captions_fit_64_pixel_panels():
    """The review's case: a 64-pixel input, scores, partition and mosaic captions side by side."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64)
    scores = torch.rand(1, 4, 4) + 0.1
    part = partition(scores, num_rows=4, num_tokens=16)
    patches = sample_patches(image, part, 8)
    grid = np.asarray(partition_overview(image, part, scores=scores, patches=patches))
    panels = [heatmap(image, scores), draw_partition(image, part), patch_mosaic(patches)]
    caption_boxes(grid, [p.size for p in panels])
    for k, panel in enumerate(panels):
        np.testing.assert_array_equal(grid[4:4 + panel.height, 4 + 68 * k:4 + 68 * k + panel.width], np.asarray(panel))


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text(alphabet="aijfWm,-( ", min_size=1, max_size=14), min_size=0, max_size=8),
       width=st.integers(1, 90))
def test_wrap_caption_fits_the_width_and_keeps_every_character(words, width):
    font = ImageFont.load_default(size=14)
    text = " ".join(words)
    lines = wrap_caption(text, font, width)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for line in lines:
        left, _, right, _ = probe.textbbox((0, 0), line, font=font)
        assert line == line.strip() and line
        assert right - min(left, 0) <= width or len(line) == 1, (line, width)
    assert "".join(lines).replace(" ", "") == "".join(text.split())
