"""``python -m dart_core``: the ``dart-core`` command line (see :mod:`dart_core.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
