"""A slow, obvious transcription of DESIGN.md §1 steps 2-6: the oracle for the fast paths.

Everything here loops in Python, builds dense overlap matrices, builds the row strip as an
image with one ``grid_sample`` per row, then samples the strip with ``grid_sample``. It shares
no code with ``dart_core``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def quantiles(density: torch.Tensor, count: int) -> torch.Tensor:
    """(n,) density → (count + 1,) boundaries: 0, quantiles at k / count, n."""
    n = density.shape[0]
    cumsum = torch.cumsum(density, 0)
    out = [density.new_zeros(())]
    for k in range(1, count):
        p = k / count
        j = n - 1
        for i in range(n):
            if cumsum[i] >= p:
                j = i
                break
        before = cumsum[j - 1] if j > 0 else density.new_zeros(())
        out.append(j + (p - before) / (density[j] + 1e-8))
    out.append(density.new_tensor(float(n)))
    return torch.stack(out)


def overlap_matrix(new_edges: torch.Tensor, n_old: int) -> torch.Tensor:
    """(K + 1,) new edges → (K, n_old) overlaps with the unit cells [i, i + 1]."""
    rows = []
    for k in range(new_edges.shape[0] - 1):
        a, b = new_edges[k], new_edges[k + 1]
        rows.append(
            torch.stack(
                [torch.clamp(torch.minimum(b, a.new_tensor(i + 1.0)) - torch.maximum(a, a.new_tensor(float(i))), min=0)
                 for i in range(n_old)]
            )
        )
    return torch.stack(rows)


def partition_one(scores: torch.Tensor, num_rows: int, num_tokens: int):
    """(h, w) scores → (row boundaries in old-row units, token boundaries in strip cells, strip density)."""
    h, w = scores.shape
    pdf = scores / scores.sum()
    m = pdf.sum(1)
    m = m / (m.sum() + 1e-8)
    row_b = quantiles(m, num_rows)
    weights = overlap_matrix(row_b, h)
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-6)
    strip = (weights @ pdf).reshape(-1)
    strip = strip / strip.sum()
    tok_b = quantiles(strip, num_tokens)
    return row_b, tok_b, weights


def partition(scores: torch.Tensor, num_rows: int, num_tokens: int):
    """(B, h, w) → (row_edges as height fractions (B, R+1), token_edges in row units (B, N+1))."""
    h, w = scores.shape[1:]
    rows, toks = [], []
    for s in scores:
        r, t, _ = partition_one(s, num_rows, num_tokens)
        rows.append(r / h)
        toks.append(t / w)
    return torch.stack(rows), torch.stack(toks)


def pos_embed(pos_grid: torch.Tensor, scores: torch.Tensor, num_rows: int, num_tokens: int) -> torch.Tensor:
    """(1, h, w, D) table, (B, h, w) scores → (B, N, D)."""
    h, w, d = pos_grid.shape[1:]
    out = []
    for s in scores:
        row_b, tok_b, weights = partition_one(s, num_rows, num_tokens)
        rows = torch.einsum("ri,iwd->rwd", weights, pos_grid[0])
        strip = rows.reshape(-1, d)
        ov = overlap_matrix(tok_b, strip.shape[0])
        ov = ov / (ov.sum(1, keepdim=True) + 1e-12)
        out.append(ov @ strip)
    return torch.stack(out)


def build_strip(image: torch.Tensor, row_edges_px: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(C, H, W) image, (R + 1,) row edges in pixels → (C, P, R·W) strip, one grid_sample per row."""
    c, hh, ww = image.shape
    pieces = []
    for r in range(row_edges_px.shape[0] - 1):
        y0, y1 = row_edges_px[r], row_edges_px[r + 1]
        ys = torch.stack([y0 + (y1 - y0) * k / patch_size for k in range(patch_size)])
        xs = torch.arange(ww, dtype=image.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([2 * gx / (ww - 1) - 1, 2 * gy / (hh - 1) - 1], -1)[None]
        pieces.append(F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0])
    return torch.cat(pieces, dim=2)


def sample_patches(images: torch.Tensor, row_edges: torch.Tensor, token_edges: torch.Tensor, patch_size: int):
    """(B, C, H, W), height-fraction row edges, row-unit token edges → (B, N, C, P, P)."""
    b, c, hh, ww = images.shape
    out = []
    for i in range(b):
        strip = build_strip(images[i], row_edges[i] * hh, patch_size)
        length = strip.shape[-1]
        xe = token_edges[i] * ww
        patches = []
        for n in range(xe.shape[0] - 1):
            xs = torch.stack([xe[n] + (xe[n + 1] - xe[n]) * t / patch_size for t in range(patch_size)])
            ys = torch.arange(patch_size, dtype=images.dtype)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([2 * gx / (length - 1) - 1, 2 * gy / (patch_size - 1) - 1], -1)[None]
            patches.append(F.grid_sample(strip[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0])
        out.append(torch.stack(patches))
    return torch.stack(out)
