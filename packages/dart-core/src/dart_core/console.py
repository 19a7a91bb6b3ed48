"""Python warnings as command-line users read them.

``warnings`` prints a source file and line with each warning, and in a command-line tool those
point into DART's code or the console-script stub (``sys.exit(main())``): nothing a user of
``dart-video train`` can act on. Inside :func:`warnings_as_messages` a warning is one line,
``PROGRAM: warning: MESSAGE`` on stderr, like the tools' errors; warnings that are not plain
``UserWarning``/``RuntimeWarning`` keep their category, e.g. ``warning (FutureWarning): ...``.
Which warnings show, and how often, stays with Python's filters.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


def warning_line(program: str, message: Warning | str, category: type[Warning]) -> str:
    """The one line a command-line tool prints for a warning."""
    kind = "" if category in (UserWarning, RuntimeWarning) else f" ({category.__name__})"
    return f"{program}: warning{kind}: {message}"


@contextmanager
def warnings_as_messages(program: str) -> Iterator[None]:
    """Within the block, print each warning shown as :func:`warning_line` on stderr."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(warning_line(program, message, category), file=file or sys.stderr, flush=True)

    original = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
