"""DART for dense prediction: the regular-grid warp (DESIGN.md §3) and mmengine models.

Importing the package registers its models, datasets, metrics and runner with mmengine
(``custom_imports = dict(imports=['dart_dense'])`` in a config) and installs the weights-only
checkpoint loader (see :mod:`dart_dense.checkpoint`).
"""

from . import checkpoint, det_data, det_metric, detector, preprocessor, seg_data, seg_metric, segmentor  # noqa: F401
from .warp import GridWarp, marginal_edges, piecewise_linear
from .warper import DartWarp

__all__ = ["DartWarp", "GridWarp", "marginal_edges", "piecewise_linear"]
