"""The regular-grid warp of DESIGN.md §3 and its exact inverse.

Coordinates. Points and boxes are in continuous image coordinates: pixel ``i`` covers
``[i, i + 1]`` (the COCO box convention), so an H×W image spans ``[0, W] × [0, H]``.

The warp. Rows come from the row marginal of the score density and columns from the column
marginal, both split into equal-mass pieces by step 2's quantiles
(:func:`dart_core.density_edges`): R rows with boundaries ``0 = Y_0 < … < Y_R = H`` and C
columns with ``0 = X_0 < … < X_C = W``. Cell ``[X_c, X_{c+1}] × [Y_r, Y_{r+1}]`` becomes the P×P
cell ``[cP, (c+1)P] × [rP, (r+1)P]`` of the warped (R·P) × (C·P) image. Along each axis the map
is the piecewise-linear function through the knots ``(Y_r, r·P)``: monotone and separable, so
its inverse is the piecewise-linear function through ``(r·P, Y_r)``, boxes stay axis-aligned
in both directions, and forward∘inverse is the identity up to float rounding. Outside
``[0, H]`` both maps continue their first and last segments, so they are bijections of the whole
line (a box that sticks out of the image keeps its exact inverse).

Resampling. Warped pixel ``j`` (centre ``j + 0.5``) takes the image's bilinear value at the
inverse image of its centre (pixel-index coordinate ``y - 0.5``, border padding), the
convention of ``F.interpolate(..., align_corners=False)``; uniform scores therefore give a plain
bilinear resize, and the identity when ``H = R·P``. Dense maps (logits, masks) predicted on the
warped image go back the same way: original pixel ``i`` samples the map at the forward image of
its centre.

Batches may hold images of different sizes padded to a common tensor: each sample carries its
own ``(H, W)`` and is sampled only inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from dart_core.partition import marginal_edges, score_density
from dart_core.sampling import row_lines

ResampleMode = Literal["bilinear", "nearest"]


def piecewise_linear(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Evaluate the piecewise-linear function through the knots, extended linearly at both ends.

    Args:
        x: (B, M) query points.
        knots_x: (B, K + 1) non-decreasing knot positions (K >= 1).
        knots_y: (B, K + 1) values at the knots.

    Returns:
        (B, M) values in ``knots_y``'s dtype; differentiable in all three inputs.
    """
    x = x.to(knots_x.dtype)
    segments = knots_x.shape[-1] - 1
    seg = torch.searchsorted(knots_x.detach().contiguous(), x.detach().contiguous(), right=True) - 1
    seg = seg.clamp(0, segments - 1)
    x0, x1 = knots_x.gather(-1, seg), knots_x.gather(-1, seg + 1)
    y0, y1 = knots_y.gather(-1, seg), knots_y.gather(-1, seg + 1)
    width = x1 - x0
    # A zero-width segment (only reachable as an end segment) maps everything to its start.
    positive = width > 0
    t = torch.where(positive, (x - x0) / torch.where(positive, width, torch.ones_like(width)), 0.0)
    return y0 + t * (y1 - y0)


def resample_axis(
    values: torch.Tensor, positions: torch.Tensor, dim: int, limits: torch.Tensor, mode: ResampleMode
) -> torch.Tensor:
    """Sample every line of ``values`` across one axis at fractional pixel-index positions.

    Args:
        values: (B, C, H, W).
        positions: (B, L) pixel-index coordinates along ``dim``.
        dim: 2 (sample rows, output (B, C, L, W)) or 3 (sample columns, output (B, C, H, L)).
        limits: (B,) the valid extent of each sample along ``dim``; positions are clamped to
            ``[0, limit - 1]`` (border padding inside each sample's own image).
        mode: "bilinear" (differentiable in values and positions) or "nearest" (any dtype,
            e.g. integer label maps).

    Returns:
        The resampled tensor.
    """
    if dim == 3:
        values = values.transpose(2, 3)
    upper = (limits.to(positions.dtype) - 1).unsqueeze(-1)
    positions = torch.minimum(positions.clamp(min=0.0), upper)
    if mode == "bilinear":
        out = row_lines(values, positions)
    elif mode == "nearest":
        index = torch.floor(positions.detach() + 0.5).long()
        batch, channels, _, width = values.shape
        out = values.gather(2, index[:, None, :, None].expand(batch, channels, index.shape[1], width))
    else:
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    return out.transpose(2, 3) if dim == 3 else out


def pixel_centres(count: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """(B, count) the centres ``i + 0.5`` of pixels 0..count-1."""
    return (torch.arange(count, device=like.device, dtype=like.dtype) + 0.5).expand(batch, count)


def check_image_sizes(image_sizes, batch: int | None = None) -> torch.Tensor:
    """Validate (B, 2) per-image (H, W) sizes (a tensor or a nested sequence such as
    ``[[480, 640], [300, 400]]``) and return them as a float64 tensor on the same device. The
    check reads the values: give CPU sizes (a GPU tensor costs a device read-back)."""
    try:
        image_sizes = torch.as_tensor(image_sizes)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"image_sizes must be a (B, 2) tensor or nested sequence of (H, W) numbers; got "
                        f"{image_sizes!r} ({error})") from error
    if image_sizes.dim() != 2 or image_sizes.shape[1] != 2:
        raise ValueError(f"image_sizes must be (B, 2) rows of (H, W); got shape {tuple(image_sizes.shape)}")
    if batch is not None and image_sizes.shape[0] != batch:
        raise ValueError(f"image_sizes has {image_sizes.shape[0]} rows but the batch has {batch} samples")
    if bool((image_sizes < 1).any()):
        raise ValueError(f"image sizes must be at least 1×1; got {image_sizes.tolist()}")
    return image_sizes.to(torch.float64)


def host_copy(sizes: torch.Tensor) -> torch.Tensor | None:
    """``sizes`` when they are on the CPU (free to keep), else None (reading them back would sync)."""
    return sizes if sizes.device.type == "cpu" else None


@dataclass(frozen=True)
class GridWarp:
    """A separable, monotone warp of each image onto a regular (R·P) × (C·P) grid.

    Attributes:
        row_edges: (B, R + 1) row boundaries as fractions of each image's height (0 … 1).
        col_edges: (B, C + 1) column boundaries as fractions of each image's width.
        image_sizes: (B, 2) float64 (H, W) of each original image, on the edges' device.
        cell_size: P, the side of each warped cell in pixels.
        host_sizes: the same sizes on the CPU when the warp was built from CPU sizes (the
            constructors keep them), so the checks and output sizes the host decides read no
            value back from a GPU; None: :meth:`sizes_on_host` copies ``image_sizes`` back.
    """

    row_edges: torch.Tensor
    col_edges: torch.Tensor
    image_sizes: torch.Tensor
    cell_size: int
    host_sizes: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.host_sizes is not None and (
            self.host_sizes.device.type != "cpu" or self.host_sizes.shape != self.image_sizes.shape
        ):
            raise ValueError(
                f"host_sizes must be the CPU copy of image_sizes {tuple(self.image_sizes.shape)}; got a "
                f"{self.host_sizes.device.type} tensor of shape {tuple(self.host_sizes.shape)}"
            )

    def sizes_on_host(self) -> torch.Tensor:
        """(B, 2) float64 image sizes on the CPU (``host_sizes``, or a copy of ``image_sizes``)."""
        return self.host_sizes if self.host_sizes is not None else self.image_sizes.cpu()

    @property
    def batch_size(self) -> int:
        return self.row_edges.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """(R, C)."""
        return self.row_edges.shape[-1] - 1, self.col_edges.shape[-1] - 1

    @property
    def out_size(self) -> tuple[int, int]:
        """(R·P, C·P), the warped image size."""
        rows, cols = self.grid
        return rows * self.cell_size, cols * self.cell_size

    def knots(self, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots of the map along ``axis`` (0 = y, 1 = x): (original, warped), each (B, K + 1)."""
        edges = self.row_edges if axis == 0 else self.col_edges
        original = edges * self.image_sizes[:, axis : axis + 1].to(edges.dtype)
        warped = torch.arange(edges.shape[-1], device=edges.device, dtype=edges.dtype) * self.cell_size
        return original, warped.expand_as(original)

    def coords_to_warped(self, coords: torch.Tensor, axis: int) -> torch.Tensor:
        """(B, M) original coordinates along ``axis`` → warped coordinates (float64)."""
        original, warped = self.knots(axis)
        return piecewise_linear(coords, original, warped)

    def coords_to_original(self, coords: torch.Tensor, axis: int) -> torch.Tensor:
        """(B, M) warped coordinates along ``axis`` → original coordinates (float64)."""
        original, warped = self.knots(axis)
        return piecewise_linear(coords, warped, original)

    def _map_points(self, points: torch.Tensor, forward: bool) -> torch.Tensor:
        if points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != self.batch_size:
            raise ValueError(
                f"points must be (B={self.batch_size}, M, 2) rows of (x, y); got shape {tuple(points.shape)}"
            )
        fn = self.coords_to_warped if forward else self.coords_to_original
        x = fn(points[..., 0], axis=1)
        y = fn(points[..., 1], axis=0)
        return torch.stack([x, y], dim=-1).to(points.dtype)

    def points_to_warped(self, points: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) (x, y) original points → warped points, in ``points``' dtype."""
        return self._map_points(points, forward=True)

    def points_to_original(self, points: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) (x, y) warped points → original points, in ``points``' dtype."""
        return self._map_points(points, forward=False)

    def _map_boxes(self, boxes: torch.Tensor, forward: bool) -> torch.Tensor:
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (B, M, 4) rows of (x0, y0, x1, y1); got shape {tuple(boxes.shape)}")
        corners = boxes.reshape(boxes.shape[0], -1, 2)
        return self._map_points(corners, forward).reshape(boxes.shape)

    def boxes_to_warped(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, M, 4) xyxy original boxes → warped boxes (still axis-aligned and ordered)."""
        return self._map_boxes(boxes, forward=True)

    def boxes_to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, M, 4) xyxy warped boxes → original boxes (still axis-aligned and ordered)."""
        return self._map_boxes(boxes, forward=False)

    def warp_image(self, images: torch.Tensor, mode: ResampleMode = "bilinear") -> torch.Tensor:
        """Resample each image onto its warped grid.

        Args:
            images: (B, C, H', W') images, each valid in its top-left ``image_sizes[b]`` corner
                (H' and W' at least the largest size).
            mode: "bilinear" (differentiable in the images and the edges) or "nearest".

        Returns:
            (B, C, R·P, C·P) the warped images.
        """
        self._check_batch(images, "images")
        largest = self.sizes_on_host().max(0).values.tolist()
        if images.shape[-2] < largest[0] or images.shape[-1] < largest[1]:
            raise ValueError(
                f"images of shape {tuple(images.shape)} are smaller than the largest image size "
                f"{largest} this warp was built for"
            )
        sizes = self.image_sizes
        out_h, out_w = self.out_size
        centres_y = pixel_centres(out_h, self.batch_size, self.row_edges)
        centres_x = pixel_centres(out_w, self.batch_size, self.col_edges)
        source_y = self.coords_to_original(centres_y, axis=0) - 0.5
        source_x = self.coords_to_original(centres_x, axis=1) - 0.5
        rows = resample_axis(images, source_y, 2, sizes[:, 0], mode)
        return resample_axis(rows, source_x, 3, sizes[:, 1], mode)

    def unwarp_map(
        self,
        maps: torch.Tensor,
        size: tuple[int, int] | None = None,
        mode: ResampleMode = "bilinear",
    ) -> torch.Tensor:
        """Resample dense maps predicted on the warped images back to the original images.

        Args:
            maps: (B, K, h, w) maps covering the whole warped image (any resolution, e.g. a
                stride-8 logit map: map pixel ``i`` covers warped ``[i, i + 1] · R·P / h``).
            size: (H', W') of the output; defaults to the largest image size of the batch.
                Pixels outside a sample's own image are filled by border padding (mask them).
            mode: "bilinear" for logits/probabilities, "nearest" for label maps (any dtype).

        Returns:
            (B, K, H', W') maps in original image coordinates.
        """
        self._check_batch(maps, "maps")
        if size is None:
            size = tuple(int(s) for s in self.sizes_on_host().max(0).values.tolist())
        out_h, out_w = self.out_size
        map_h, map_w = maps.shape[-2:]
        centres_y = pixel_centres(size[0], self.batch_size, self.row_edges)
        centres_x = pixel_centres(size[1], self.batch_size, self.col_edges)
        source_y = self.coords_to_warped(centres_y, axis=0) * (map_h / out_h) - 0.5
        source_x = self.coords_to_warped(centres_x, axis=1) * (map_w / out_w) - 0.5
        limit_y = torch.full((self.batch_size,), map_h, device=maps.device)
        limit_x = torch.full((self.batch_size,), map_w, device=maps.device)
        rows = resample_axis(maps, source_y, 2, limit_y, mode)
        return resample_axis(rows, source_x, 3, limit_x, mode)

    def select(self, index: int) -> GridWarp:
        """The warp of sample ``index`` alone (batch of one; negative indices count from the end)."""
        if not -self.batch_size <= index < self.batch_size:
            raise IndexError(f"sample {index} is out of range for a warp of {self.batch_size} samples")
        index %= self.batch_size
        pick = slice(index, index + 1)
        host = None if self.host_sizes is None else self.host_sizes[pick]
        return GridWarp(self.row_edges[pick], self.col_edges[pick], self.image_sizes[pick], self.cell_size, host)

    def _check_batch(self, tensor: torch.Tensor, name: str) -> None:
        if tensor.dim() != 4 or tensor.shape[0] != self.batch_size:
            raise ValueError(f"{name} must be (B={self.batch_size}, C, H, W); got shape {tuple(tensor.shape)}")

    @classmethod
    def uniform(
        cls, image_sizes: torch.Tensor, grid: tuple[int, int], cell_size: int, device=None
    ) -> GridWarp:
        """The fixed grid (a plain bilinear resize to (R·P, C·P)): the no-DART baseline."""
        checked = check_image_sizes(image_sizes)
        sizes = checked.to(device)
        batch = sizes.shape[0]
        rows = torch.linspace(0.0, 1.0, grid[0] + 1, dtype=torch.float64, device=sizes.device)
        cols = torch.linspace(0.0, 1.0, grid[1] + 1, dtype=torch.float64, device=sizes.device)
        return cls(rows.expand(batch, -1), cols.expand(batch, -1), sizes, cell_size, host_copy(checked))

    @classmethod
    def from_scores(
        cls, scores: torch.Tensor, image_sizes: torch.Tensor, grid: tuple[int, int], cell_size: int,
        host_sizes: torch.Tensor | None = None,
    ) -> GridWarp:
        """The DART warp: R rows from the row marginal and C columns from the column marginal.

        Args:
            scores: (B, h, w) non-negative scores (invalid samples fall back to a uniform grid,
                see :func:`dart_core.partition.score_density`).
            image_sizes: (B, 2) (H, W) of each image.
            grid: (R, C).
            cell_size: P.
            host_sizes: the CPU copy of ``image_sizes`` when those are already on the scores'
                device (e.g. another warp's ``image_sizes`` / ``host_sizes``): then nothing is
                copied to the device again and the check reads the CPU copy.

        Returns:
            A :class:`GridWarp`, differentiable almost everywhere in ``scores``.
        """
        if grid[0] < 1 or grid[1] < 1 or cell_size < 1:
            raise ValueError(f"grid and cell_size must be positive; got grid={grid}, cell_size={cell_size}")
        pdf = score_density(scores)
        if host_sizes is None:
            checked = check_image_sizes(image_sizes, scores.shape[0])
            sizes, host_sizes = checked.to(scores.device), host_copy(checked)
        else:
            host_sizes = check_image_sizes(host_sizes, scores.shape[0])
            if not isinstance(image_sizes, torch.Tensor) or image_sizes.shape != host_sizes.shape:
                raise ValueError(
                    f"with host_sizes, image_sizes must be their (B, 2) copy on the device; got "
                    f"{tuple(image_sizes.shape) if isinstance(image_sizes, torch.Tensor) else type(image_sizes).__name__}"
                    f" for host_sizes {tuple(host_sizes.shape)}"
                )
            if image_sizes.device.type == "cpu" and not torch.equal(image_sizes.to(torch.float64), host_sizes):
                raise ValueError(f"image_sizes {image_sizes.tolist()} and host_sizes {host_sizes.tolist()} disagree")
            sizes = image_sizes.to(device=scores.device, dtype=torch.float64)
        return cls(marginal_edges(pdf, -1, grid[0]), marginal_edges(pdf, -2, grid[1]), sizes, cell_size, host_sizes)
