"""Image models with DART, registered with timm on import."""

from .deit import TOKEN_BUDGETS, DARTVisionTransformer
from .patch import patch_timm

__all__ = ["DARTVisionTransformer", "TOKEN_BUDGETS", "patch_timm"]
