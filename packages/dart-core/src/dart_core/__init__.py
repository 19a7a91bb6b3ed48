"""DART: a differentiable, content-adaptive tokenizer for vision models (see DESIGN.md).

Importing ``dart_core`` registers the DeiT + DART and Vim (+ DART) models with timm.
"""

from . import mamba  # noqa: F401  registers Vim (+ DART) with timm
from .checkpoint import (
    CheckpointMismatchError,
    convert_published_state_dict,
    load_published_checkpoint,
    read_state_dict,
)
from .models import TOKEN_BUDGETS, DARTVisionTransformer, patch_timm  # registers DeiT + DART with timm
from .partition import Partition, default_num_rows, marginal_edges, partition, score_density
from .pos_embed import resample_pos_embed, split_prefix_pos_embed
from .quantile import density_edges, density_quantiles
from .sampling import sample_patches
from .scorers import Scorer, build_scorer, standardise
from .tokenizer import DART, TokenizerOutput

__all__ = [
    "DART",
    "CheckpointMismatchError",
    "DARTVisionTransformer",
    "Partition",
    "Scorer",
    "TOKEN_BUDGETS",
    "TokenizerOutput",
    "build_scorer",
    "convert_published_state_dict",
    "default_num_rows",
    "density_edges",
    "density_quantiles",
    "load_published_checkpoint",
    "marginal_edges",
    "partition",
    "patch_timm",
    "read_state_dict",
    "resample_pos_embed",
    "sample_patches",
    "score_density",
    "split_prefix_pos_embed",
    "standardise",
]
