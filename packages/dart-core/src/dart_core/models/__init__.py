"""Image models with DART, registered with timm on import."""

from .data_config import built_data_config
from .deit import TOKEN_BUDGETS, DARTVisionTransformer
from .patch import patch_timm

__all__ = ["DARTVisionTransformer", "TOKEN_BUDGETS", "built_data_config", "patch_timm"]
