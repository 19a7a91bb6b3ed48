"""Regenerate docs/partition_astronaut.png: DART partitions of a real photo (scikit-image's astronaut).

Three panels, all 196 tokens in 14 rows on the 448x448 input of ``deit_tiny_dart_patch16_448``:
1. uniform scores: DART's degenerate case, the fixed 14x14 ViT grid;
2. the model's own scorer with random weights (seed 0; no checkpoint, so no training): nearly uniform;
3. a hand-made content score (mean image-gradient magnitude per cell, + 0.1), to show how
   the partition follows content: more, smaller tokens where the score is high.
Panel 1 tints tokens alternately; panels 2-3 show their score heat map instead. Drawn at 320 px and saved with a 256-colour palette to stay small.

    python docs/make_partition_astronaut.py [OUT.png]
"""

import sys

import skimage.data
import timm
import torch
import torch.nn.functional as F
from dart_core import partition
from dart_core.visualize import draw_partition, image_grid, save_png, to_pil
from PIL import Image
from timm.data import create_transform, resolve_data_config

DISPLAY = 320


def gradient_scores(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, C, H, W) → (1, h, w): mean gradient magnitude of the grey image per cell, + 0.1 of its mean."""
    grey = images.mean(1, keepdim=True)
    dy, dx = grey[..., 1:, :-1] - grey[..., :-1, :-1], grey[..., :-1, 1:] - grey[..., :-1, :-1]
    energy = F.adaptive_avg_pool2d((dx**2 + dy**2).sqrt(), grid)[:, 0]
    return energy + 0.1 * energy.mean()


def main(out: str = "docs/partition_astronaut.png") -> None:
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_dart_patch16_448").eval()
    config = resolve_data_config({}, model=model)
    photo = Image.fromarray(skimage.data.astronaut())
    inputs = create_transform(**config, is_training=False)(photo).unsqueeze(0)
    tokenizer = model.patch_embed
    with torch.no_grad():
        learned = tokenizer(inputs, return_details=True)
    grid = tokenizer.grid_size
    picture = to_pil(inputs, mean=config["mean"], std=config["std"]).resize((DISPLAY, DISPLAY), Image.LANCZOS)
    rows, tokens = tokenizer.num_rows, tokenizer.num_tokens
    uniform = partition(torch.ones(1, *grid), rows, tokens)
    content = gradient_scores(inputs, grid)
    panels = [
        draw_partition(picture, uniform),
        draw_partition(picture, learned.partition, scores=learned.scores, shade=False),
        draw_partition(picture, partition(content, rows, tokens), scores=content, shade=False),
    ]
    captions = ["uniform scores (the ViT grid)", "random-weight scorer", "image-gradient scores"]
    figure = image_grid(panels, captions).quantize(256, dither=Image.Dither.NONE)
    save_png(figure, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
