"""DART: a differentiable, content-adaptive tokenizer for vision models (see DESIGN.md).

Importing ``dart_core`` registers the DeiT + DART and Vim (+ DART) models with timm.
"""

from .checkpoint import CheckpointMismatchError, convert_published_deit, load_published_deit, read_state_dict
from .partition import Partition, default_num_rows, marginal_edges, partition, score_density
from .pos_embed import resample_pos_embed, split_prefix_pos_embed
from .quantile import density_edges, density_quantiles
from .sampling import sample_patches
from .scorers import Scorer, build_scorer, standardise
from .tokenizer import DART, TokenizerOutput
from .models import DARTVisionTransformer, TOKEN_BUDGETS, patch_timm  # registers DeiT + DART with timm
from . import mamba  # noqa: E402  registers Vim (+ DART) with timm

__all__ = [
    "DART",
    "CheckpointMismatchError",
    "DARTVisionTransformer",
    "Partition",
    "Scorer",
    "TOKEN_BUDGETS",
    "TokenizerOutput",
    "build_scorer",
    "convert_published_deit",
    "default_num_rows",
    "density_edges",
    "density_quantiles",
    "load_published_deit",
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
