"""Reading the JSON files users hand to DART (COCO annotations, SSv2 label maps and splits)."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str | os.PathLike, remedy: str) -> Any:
    """The parsed content of a user's JSON file.

    Args:
        path: the file.
        remedy: what the file should hold or where a good copy comes from; ends every error.

    Raises:
        FileNotFoundError: no file at the path (nothing, or a folder).
        ValueError: it is empty, not UTF-8 or not valid JSON (the parser's complaint is quoted).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a JSON file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"{path} {what}; {remedy}")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark some editors write is fine
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); {remedy}") from error
    if not text.strip():
        raise ValueError(f"{path} is empty; {remedy}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {remedy}") from error
