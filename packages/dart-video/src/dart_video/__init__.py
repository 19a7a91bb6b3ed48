"""DART for video: tall-frame tokenizer, temporal-difference scorer, VideoMamba models, SSv2 data.

Importing ``dart_video`` registers the VideoMamba (+ DART) models with timm.
"""

from .checkpoint import adapt_state_dict, load_video_checkpoint
from .models import VideoMamba, VideoPatchEmbed
from .scorer import TemporalDifferenceScorer, TemporalGateHead, build_temporal_scorer
from .tokenizer import VideoDART, frames_to_tall, tall_to_frames, video_num_rows, video_pos_grid

__all__ = [
    "TemporalDifferenceScorer",
    "TemporalGateHead",
    "VideoDART",
    "VideoMamba",
    "VideoPatchEmbed",
    "adapt_state_dict",
    "build_temporal_scorer",
    "frames_to_tall",
    "load_video_checkpoint",
    "tall_to_frames",
    "video_num_rows",
    "video_pos_grid",
]
