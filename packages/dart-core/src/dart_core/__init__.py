"""DART: a differentiable, content-adaptive tokenizer for vision models (see DESIGN.md)."""

from .partition import Partition, default_num_rows, partition, score_density
from .pos_embed import resample_pos_embed, split_prefix_pos_embed
from .quantile import density_edges, density_quantiles
from .sampling import sample_patches

__all__ = [
    "Partition",
    "default_num_rows",
    "density_edges",
    "density_quantiles",
    "partition",
    "resample_pos_embed",
    "sample_patches",
    "score_density",
    "split_prefix_pos_embed",
]
