"""``python -m dart_video.demo``: DART vs uniform tokens on moving digits (see __main__)."""
