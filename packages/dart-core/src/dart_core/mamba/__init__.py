"""Bidirectional Mamba (Vim / VideoMamba) with a pure-PyTorch selective scan.

Importing this package registers the Vim and Vim + DART models with timm.
"""

from .encoder import MambaBlock, MambaEncoder
from .mixer import BiMamba
from .scan import selective_scan, uses_kernel
from .vim import VisionMamba  # noqa: E402  (registers with timm)

__all__ = ["BiMamba", "MambaBlock", "MambaEncoder", "VisionMamba", "selective_scan", "uses_kernel"]
