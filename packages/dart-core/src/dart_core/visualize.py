"""Pictures of DART partitions: score heat maps, row and token boundaries, and patch mosaics.

Everything returns ``PIL.Image`` objects and needs only Pillow and NumPy (no display, no
matplotlib), so it runs headless, in tests and on servers.

Images are accepted as a ``PIL.Image``, a NumPy array — (H, W), (H, W, C) — or a torch tensor —
(C, H, W), or (B, C, H, W) with ``index`` picking the sample. Float arrays/tensors are read as
[0, 1] intensities; a model's *normalised* input goes through :func:`to_pil` with the model's
``mean`` / ``std`` first (``to_pil(x, mean=cfg["mean"], std=cfg["std"])``).

Geometry (see :mod:`dart_core.partition` for the units): a boundary at continuous position ``p``
pixels (``row_edges · H`` or ``frac(token_edge) · W``) is drawn on pixel ``round(p)``, clamped
into the image. Row boundaries are horizontal lines across the image. Token edge ``e`` lies in
row ``floor(e)`` at ``x = frac(e) · W`` and is drawn as a vertical segment from that row's top
line to its bottom line; an edge that is exactly an integer k (0 < k < R) is the start of row k,
its left border. A token that runs from the end of one row into the next is shaded in both.

Typical use::

    out = model.patch_embed(x, return_details=True)
    picture = to_pil(x, index=0, mean=mean, std=std)
    draw_partition(picture, out.partition, scores=out.scores).save("partition.png")
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .partition import Partition

ImageLike = Image.Image | np.ndarray | torch.Tensor
Color = tuple[int, int, int]

# Anchor colours of matplotlib's "viridis" at 0, 1/4, 1/2, 3/4, 1 (dark blue → yellow).
VIRIDIS_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
# Score cells that are NaN or ±inf (a broken image or model) are painted in this colour.
NONFINITE_COLOR: Color = (255, 0, 255)
# Two shades alternating from token to token along the strip.
DEFAULT_PALETTE: tuple[Color, ...] = ((255, 64, 64), (64, 160, 255))


def _pick(array: np.ndarray | torch.Tensor, batched_dims: int, index: int):
    """Drop a leading batch axis (when the array has ``batched_dims`` dimensions) at ``index``."""
    return array[index] if array.ndim == batched_dims else array


def to_pil(
    image: ImageLike,
    index: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Image.Image:
    """Any supported image as an RGB ``PIL.Image``.

    Args:
        image: a PIL image; a NumPy (H, W) or (H, W, C) array; or a tensor (C, H, W) or
            (B, C, H, W). Floats are [0, 1] intensities (after undoing ``mean``/``std``),
            clipped; integers are 0..255.
        index: the sample of a batched tensor.
        mean, std: per-channel normalisation to undo (``x · std + mean``), e.g. a timm model's
            ``pretrained_cfg["mean"]`` / ``["std"]``.

    Returns:
        An RGB image (one-channel inputs are repeated as grey).
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() not in (3, 4):
            raise ValueError(f"an image tensor must be (C, H, W) or (B, C, H, W); got shape {tuple(image.shape)}")
        tensor = _pick(image.detach().cpu(), 4, index)
        tensor = tensor.to(torch.float64) if tensor.is_floating_point() else tensor
        array = tensor.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"an image array must be (H, W) or (H, W, C); got shape {image.shape}")
        array = image if image.ndim == 3 else image[:, :, None]
    else:
        raise TypeError(f"expected a PIL image, NumPy array or torch tensor, got {type(image).__name__}")
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image needs 1, 3 or 4 channels; got {array.shape[-1]} (shape {array.shape})")
    array = array[..., :3]
    if mean is not None or std is not None:
        channels = array.shape[-1]
        array = array.astype(np.float64) * np.asarray(std if std is not None else [1.0] * channels) + np.asarray(
            mean if mean is not None else [0.0] * channels
        )
    if np.issubdtype(array.dtype, np.floating):
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0)
    array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to viridis colours (piecewise linear between its anchors).

    Args:
        values: (...) array of finite values; clipped to [0, 1].

    Returns:
        (..., 3) uint8 colours.

    Raises:
        ValueError: a value is NaN or ±inf (it has no colour).
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"colormap needs finite values; got {np.count_nonzero(~np.isfinite(values))} NaN or inf")
    position = np.clip(values, 0.0, 1.0) * (len(VIRIDIS_ANCHORS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(VIRIDIS_ANCHORS) - 2)
    frac = (position - low)[..., None]
    colours = VIRIDIS_ANCHORS[low] * (1 - frac) + VIRIDIS_ANCHORS[low + 1] * frac
    return np.rint(colours).astype(np.uint8)


def _score_map(scores: np.ndarray | torch.Tensor, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, h, w) or (h, w) scores → (h, w) float64 values rescaled to [0, 1] over the finite cells
    (min → 0, max → 1; a constant map → 0.5; non-finite cells → 0), and the (h, w) bool mask of
    the non-finite (NaN, ±inf) cells."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().to(torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim not in (2, 3):
        raise ValueError(f"scores must be (h, w) or (B, h, w); got shape {scores.shape}")
    grid = _pick(scores, 3, index)
    broken = ~np.isfinite(grid)
    finite = grid[~broken]
    if finite.size == 0:
        return np.zeros_like(grid), broken
    low, high = finite.min(), finite.max()
    values = np.full_like(grid, 0.5) if high <= low else (grid - low) / (high - low)
    return np.where(broken, 0.0, values), broken


def heatmap(
    image: ImageLike,
    scores: np.ndarray | torch.Tensor,
    index: int = 0,
    alpha: float = 0.5,
    smooth: bool = True,
) -> Image.Image:
    """The score map, upsampled to the image and blended over it.

    Args:
        image: see :func:`to_pil`.
        scores: (B, h, w) or (h, w) scores (e.g. ``TokenizerOutput.scores``); each map is rescaled
            to [0, 1] over its finite cells (its minimum dark blue, its maximum yellow). NaN and
            ±inf cells are painted as blocks of :data:`NONFINITE_COLOR` (magenta).
        index: the sample of batched inputs.
        alpha: opacity of the colours (0: image only, 1: colours only).
        smooth: bilinear upsampling; ``False`` shows each score cell as a block.

    Returns:
        An RGB image the size of ``image``.
    """
    base = to_pil(image, index)
    values, broken = _score_map(scores, index)
    grid = Image.fromarray(values.astype(np.float32), "F")
    upsampled = np.asarray(grid.resize(base.size, Image.BILINEAR if smooth else Image.NEAREST))
    colours = colormap(upsampled)
    if broken.any():
        mask = Image.fromarray(broken.astype(np.uint8) * 255, "L").resize(base.size, Image.NEAREST)
        colours[np.asarray(mask) > 0] = NONFINITE_COLOR
    return Image.blend(base, Image.fromarray(colours, "RGB"), alpha)


def _edges(partition: Partition, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample's (R + 1,) row edges and (N + 1,) token edges as float64 NumPy arrays."""
    batch = partition.row_edges.shape[0]
    if not -batch <= index < batch:
        raise IndexError(f"index {index} is out of range for a partition of {batch} samples")
    rows = partition.row_edges[index].detach().cpu().to(torch.float64).numpy()
    tokens = partition.token_edges[index].detach().cpu().to(torch.float64).numpy()
    return rows, tokens


def _pixel(position: float, size: int) -> int:
    """The pixel a continuous position (in pixels) is drawn on: round, clamped into [0, size - 1]."""
    return min(max(int(math.floor(position + 0.5)), 0), size - 1)


def token_pieces(partition: Partition, index: int = 0) -> list[tuple[int, int, float, float]]:
    """Where each token samples, one piece per row it touches.

    Args:
        partition: a :class:`~dart_core.partition.Partition`.
        index: the sample.

    Returns:
        ``(token, row, x_start, x_end)`` tuples in strip order, x as fractions of the image width.
        A token straddling the end of row r and the start of row r + 1 gives two pieces. Empty
        pieces (a zero-width token, or a token ending exactly at a row end) are left out.
    """
    row_edges, token_edges = _edges(partition, index)
    num_rows = len(row_edges) - 1
    pieces = []
    for token, (start, end) in enumerate(zip(token_edges[:-1], token_edges[1:], strict=True)):
        first = min(int(math.floor(start)), num_rows - 1)
        last = min(int(math.ceil(end)) - 1, num_rows - 1)
        for row in range(max(first, 0), last + 1):
            x_start, x_end = max(start, row) - row, min(end, row + 1) - row
            if x_end > x_start:
                pieces.append((token, row, x_start, x_end))
    return pieces


def draw_partition(
    image: ImageLike,
    partition: Partition,
    index: int = 0,
    scores: np.ndarray | torch.Tensor | None = None,
    shade: bool = True,
    line_color: Color = (255, 255, 255),
    line_width: int = 1,
    palette: Sequence[Color] = DEFAULT_PALETTE,
    shade_alpha: float = 0.25,
    heat_alpha: float = 0.45,
) -> Image.Image:
    """Draw a partition's row and token boundaries over an image.

    Args:
        image: see :func:`to_pil` (a batched tensor is indexed with ``index``).
        partition: the partition to draw (any resolution: edges are fractions of the image).
        index: the sample of batched inputs.
        scores: optional (B, h, w) or (h, w) scores drawn first as a heat map (:func:`heatmap`;
            NaN and ±inf cells in :data:`NONFINITE_COLOR`).
        shade: tint each token's sampling area, cycling through ``palette`` along the strip, so
            tokens that straddle two rows show up in both.
        line_color, line_width: the boundary lines.
        palette: RGB tints for ``shade``.
        shade_alpha: opacity of the tints.
        heat_alpha: opacity of the heat map.

    Returns:
        An RGB image the size of ``image``. Interior boundaries only: the image border is not
        drawn, except where a token edge falls exactly on a row end.
    """
    base = to_pil(image, index)
    if scores is not None:
        base = heatmap(base, scores, index, alpha=heat_alpha)
    width, height = base.size
    row_edges, token_edges = _edges(partition, index)
    num_rows = len(row_edges) - 1
    row_pixels = [_pixel(edge * height, height) for edge in row_edges]

    canvas = base.convert("RGBA")
    if shade:
        tint = Image.new("RGBA", base.size, (0, 0, 0, 0))
        tint_draw = ImageDraw.Draw(tint)
        opacity = int(round(255 * shade_alpha))
        for token, row, x_start, x_end in token_pieces(partition, index):
            box = (_pixel(x_start * width, width), row_pixels[row], _pixel(x_end * width, width), row_pixels[row + 1])
            tint_draw.rectangle(box, fill=tuple(palette[token % len(palette)]) + (opacity,))
        canvas = Image.alpha_composite(canvas, tint)

    draw = ImageDraw.Draw(canvas)
    for y in row_pixels[1:-1]:
        draw.line([(0, y), (width - 1, y)], fill=line_color, width=line_width)
    for edge in token_edges[1:-1]:
        row = min(int(math.floor(edge)), num_rows - 1)
        x = _pixel((edge - row) * width, width)
        draw.line([(x, row_pixels[row]), (x, row_pixels[row + 1])], fill=line_color, width=line_width)
    return canvas.convert("RGB")


def save_png(picture: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG atomically (a temporary file in the same folder, then renamed), creating the
    folder if needed."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb") as stream:
            picture.save(stream, format="PNG", optimize=True)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_partition_png(
    path: str | os.PathLike,
    image: ImageLike,
    partition: Partition,
    scores: np.ndarray | torch.Tensor | None = None,
    index: int = 0,
    **options,
) -> Image.Image:
    """Draw a partition (see :func:`draw_partition`, which takes ``options``) and write it as a PNG.

    Returns:
        The picture written.
    """
    picture = draw_partition(image, partition, index=index, scores=scores, **options)
    save_png(picture, path)
    return picture


def text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> int:
    """Pixels from the pen position's left (or the ink's, for a glyph that reaches left of its
    pen position, e.g. "j") to the right end of the ink of ``text`` drawn in ``font``."""
    left, _, right, _ = font.getbbox(text)
    return right - min(left, 0)


def wrap_caption(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap: ``text`` as lines at most ``width`` pixels wide (:func:`text_width`).

    Lines break at whitespace (runs of it become one space; a newline in ``text`` always breaks)
    and after a hyphen inside a word ("row-" | "major"). A piece wider than ``width`` on its own
    is split between characters; only a single character wider than ``width`` makes a wider
    line (of that character alone). Nothing but whitespace is dropped: joining the lines with
    spaces gives ``text``'s words, except at the splits inside words.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            for k, piece in enumerate(re.findall(r"[^-]*-|[^-]+", word)):
                joined = line + (" " if k == 0 else "") + piece if line else piece
                if text_width(font, joined) <= width:
                    line = joined
                    continue
                if line:
                    lines.append(line)
                line = ""
                for character in piece:
                    if line and text_width(font, line + character) > width:
                        lines.append(line)
                        line = ""
                    line += character
        if line:
            lines.append(line)
    return lines


def image_grid(
    images: Sequence[ImageLike],
    captions: Sequence[str] | None = None,
    columns: int | None = None,
    pad: int = 4,
    background: Color = (255, 255, 255),
    text_color: Color = (0, 0, 0),
    font_size: int = 14,
) -> Image.Image:
    """Lay pictures out side by side (e.g. several images, or the frames of a video), each with a
    caption underneath.

    Args:
        images: the pictures (anything :func:`to_pil` takes); they may differ in size — each cell
            is as large as the largest, pictures sit in its top-left corner.
        captions: one text per picture (or None), wrapped to the cell width (:func:`wrap_caption`),
            so a caption never runs into its neighbour's cell, however small the pictures; the
            caption band is as tall as the longest wrapped caption needs. Cells are widened
            only where a single character is wider than every picture.
        columns: pictures per grid row (default: all in one row).
        pad: space around and between cells, in pixels.
        background, text_color: RGB colours.
        font_size: caption size in pixels (Pillow's built-in font; a fixed small bitmap font
            where Pillow lacks FreeType).

    Returns:
        The grid as an RGB image: ``pad + columns · (cell_w + pad)`` wide, picture k pasted
        unchanged at the top-left corner of cell k (row-major).
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images")
    pictures = [to_pil(image) for image in images]
    columns = len(pictures) if columns is None else max(1, columns)
    grid_rows = math.ceil(len(pictures) / columns)
    font = ImageFont.load_default(size=font_size)
    texts = list(captions) if captions is not None else [""] * len(pictures)
    glyphs = {character for text in texts for character in text if not character.isspace()}
    # Every line is drawn `overhang` pixels right of its cell's edge, so that glyphs reaching left
    # of their pen position (e.g. "j") stay inside the cell; lines wrap to the width left over.
    overhang = max([0] + [-font.getbbox(character)[0] for character in glyphs])
    cell_w = max([p.width for p in pictures] + [text_width(font, character) + overhang for character in glyphs])
    blocks = ["\n".join(wrap_caption(text, font, cell_w - overhang)) for text in texts]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    bottoms = [probe.multiline_textbbox((0, 0), block, font=font)[3] for block in blocks if block]
    text_height = 0 if captions is None else max(bottoms, default=0) + pad
    cell_h = max(p.height for p in pictures) + text_height
    grid = Image.new("RGB", (pad + columns * (cell_w + pad), pad + grid_rows * (cell_h + pad)), background)
    draw = ImageDraw.Draw(grid)
    for k, (picture, block) in enumerate(zip(pictures, blocks, strict=True)):
        left = pad + (k % columns) * (cell_w + pad)
        top = pad + (k // columns) * (cell_h + pad)
        grid.paste(picture, (left, top))
        if block:
            draw.multiline_text((left + overhang, top + picture.height + pad // 2), block, fill=text_color, font=font)
    return grid


def patch_mosaic(
    patches: torch.Tensor,
    index: int = 0,
    columns: int | None = None,
    gap: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    background: Color = (255, 255, 255),
) -> Image.Image:
    """What the model sees: the sampled patches tiled row-major in a near-square grid.

    Args:
        patches: (B, N, C, P, P) or (N, C, P, P), e.g. ``dart_core.sample_patches(x, partition, P)``.
        index: the sample of a batch.
        columns: tiles per row (default ``ceil(sqrt(N))``; pass the grid width w to see a uniform
            partition as the original image).
        gap: pixels between tiles.
        mean, std: normalisation to undo, as in :func:`to_pil`.
        background: colour of the gaps and of unused cells.

    Returns:
        An RGB image of ``ceil(N / columns)`` × ``columns`` tiles.
    """
    if patches.dim() not in (4, 5) or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches must be (B, N, C, P, P) or (N, C, P, P); got shape {tuple(patches.shape)}")
    tiles = _pick(patches.detach().cpu(), 5, index)
    count, _, size, _ = tiles.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    mosaic = Image.new("RGB", (columns * size + (columns - 1) * gap, rows * size + (rows - 1) * gap), background)
    for k in range(count):
        tile = to_pil(tiles[k], mean=mean, std=std)
        mosaic.paste(tile, ((k % columns) * (size + gap), (k // columns) * (size + gap)))
    return mosaic


def partition_overview(
    image: ImageLike,
    partition: Partition,
    scores: np.ndarray | torch.Tensor | None = None,
    patches: torch.Tensor | None = None,
    index: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Image.Image:
    """One captioned picture: the score heat map (if ``scores``), the partition, and the patch
    mosaic (if ``patches``), side by side.

    Args:
        image: the model's input (see :func:`to_pil`); ``mean``/``std`` undo its normalisation
            (they apply to ``patches`` too).
        partition, scores, patches: e.g. from ``DART.forward(x, return_details=True)`` and
            :func:`dart_core.sample_patches`.
        index: the sample of batched inputs.
    """
    picture = to_pil(image, index, mean=mean, std=std)
    panels, captions = [], []
    if scores is not None:
        panels.append(heatmap(picture, scores, index))
        captions.append("scores (blue low, yellow high)")
    panels.append(draw_partition(picture, partition, index))
    captions.append(f"partition: {partition.num_rows} rows, {partition.num_tokens} tokens")
    if patches is not None:
        panels.append(patch_mosaic(patches, index, mean=mean, std=std))
        captions.append("sampled patches, row-major")
    return image_grid(panels, captions)
