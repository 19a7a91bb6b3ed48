"""Checkpoints that never corrupt and never execute code.

``save_checkpoint`` writes to a temporary file ``<name>.<random>.tmp`` in the destination's
directory, fsyncs it, then ``os.replace``-s it over the destination (and fsyncs the directory), so
a crash at any moment leaves either the old file or the new one, never a torn one. The file gets
the permissions a plain ``open(path, "wb")`` would give (0666 less the umask). A process killed
mid-write leaves its temporary behind; the next save to the same destination removes such
leftovers (see ``_remove_stale_temporaries`` for the rule that keeps live writers safe).

``load_checkpoint`` always uses ``torch.load(weights_only=True)``. Plain containers, numbers,
strings and tensors load as they are; the only extra Python classes allowed are those in
``SAFE_GLOBALS`` (what our checkpoints and the published DeiT-style ones legitimately hold) plus
any the caller names. Anything else is refused with an error naming the class.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .distributed import all_gather_objects

# The one allow-list of the project: published DeiT / DART checkpoints store their training
# arguments as an argparse.Namespace (a plain attribute bag); nothing else needs code to load.
SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


# When this module was imported: no save of this process can have begun before it.
_PROCESS_START = time.time()
# File-system timestamps can be coarse (FAT: 2 s) and are compared across clocks: a safety margin.
_MTIME_SLACK_S = 2.0


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or holds something we refuse to unpickle.

    Attributes:
        path: the file.
        refused: for a refused unpickle, the names of the refused classes (empty when torch could
            not name them); None for any other problem. Command-line tools use these to word their
            own advice (they cannot pass ``extra_safe_globals``).
    """

    def __init__(self, message: str, path: str | None = None, refused: tuple[str, ...] | None = None):
        super().__init__(message)
        self.path, self.refused = path, refused


def _temp_pattern(name: str) -> re.Pattern:
    """``<name>.<random>.tmp``: our temporaries (and those of earlier versions, made by mkstemp)."""
    return re.compile(re.escape(name) + r"\.[A-Za-z0-9_]+\.tmp")


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new ``<name>.<random>.tmp`` opened for writing, created with mode 0666 so that the kernel
    applies the umask (and any default ACL) exactly as for a plain ``open()``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f"{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _remove_stale_temporaries(path: str) -> None:
    """Delete the temporaries that earlier, killed saves to ``path`` left in its directory;
    ``path`` itself was just written (its modification time is "now" on the file system's clock).

    Rule: only files named ``<basename>.<random>.tmp`` (this destination's own pattern, never
    another file's) that nobody has written to since before this process started. A live writer
    keeps touching its temporary while ``torch.save`` streams into it, and this process's own saves
    all began after it started, so neither is removed. The cut-off is converted to the file
    system's clock (through ``path``'s fresh modification time) so that a network file system's
    clock skew cannot make a live file look old. Failures are ignored: the save itself succeeded.
    """
    directory, name = os.path.split(os.path.abspath(path))
    pattern = _temp_pattern(name)
    try:
        cutoff = _PROCESS_START - _MTIME_SLACK_S + os.stat(path).st_mtime - time.time()
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:  # removed meanwhile by another process, or not ours to remove: leave it
            continue


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write ``obj`` with ``torch.save`` to ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A fresh temporary file next to ``path`` for the block to write (by name, for writers that
    open files themselves, such as mmengine's); when the block ends, the file is flushed to disk
    and renamed to ``path``, then the directory entry is flushed, so a reader only ever sees the
    old file or the complete new one. Parent directories are created; the file gets the
    permissions a plain ``open()`` would give; stale temporaries that earlier killed writes to
    ``path`` left behind are removed. If the block raises, the temporary is deleted."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    _remove_stale_temporaries(path)


def save_last_and_best(obj: Any, output_dir: str | os.PathLike, best: bool = False) -> None:
    """Write ``output_dir/last.pth``, and before it ``best.pth`` when ``obj`` is a new best
    (each atomically).

    ``last.pth`` records the best score, and a resumed run only writes ``best.pth`` on a further
    improvement. Written the other way round, a run killed between the two files would resume
    believing ``best.pth`` held the new best while it held an older model, or none. In this
    order a kill in between resumes from the previous ``last.pth``, re-runs that evaluation and
    writes ``best.pth`` again.
    """
    if best:
        save_checkpoint(obj, os.path.join(output_dir, "best.pth"))
    save_checkpoint(obj, os.path.join(output_dir, "last.pth"))



def resume_path(resume: str | None, output_dir: str) -> str | None:
    """The checkpoint a ``--resume`` value names: ``"auto"`` is ``output_dir/last.pth`` when it
    exists (else a fresh start, None); anything else is taken as it is.

    In a distributed run every process looks, and they must agree: only rank 0 writes
    ``last.pth``, so on nodes that do not share ``output_dir`` the others would start afresh
    while rank 0 resumed, and the replicas would silently diverge. With ``"auto"`` this is
    therefore a collective call: every rank must make it, after the process group exists
    (before it, each process decides alone).

    Raises:
        CheckpointError: ``"auto"`` found ``last.pth`` on some processes but not on others.
    """
    if resume != "auto":
        return resume
    last = os.path.join(output_dir, "last.pth")
    found = all_gather_objects(os.path.isfile(last))
    if all(found):
        return last
    if any(found):
        seen, missing = ([rank for rank, present in enumerate(found) if present is want] for want in (True, False))
        raise CheckpointError(
            f"--resume auto: {last} exists for rank(s) {seen} but not for rank(s) {missing}: every node must see the same "
            "--output-dir (a shared filesystem), or pass --resume PATH to a checkpoint all of them can read"
        )
    return None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    extra_safe_globals: Iterable[Any] = (),
) -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and the allow-list.

    Args:
        path: the file.
        map_location: where tensors go (default CPU).
        extra_safe_globals: further classes/functions the caller trusts this file to hold.

    Raises:
        CheckpointError: the file does not exist, is not a torch.save file, or holds a Python
            object outside the allow-list (the message names it and says how to allow it; the
            names are also in ``refused``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (check the path).", path)
    return load_weights_only(path, map_location, list(SAFE_GLOBALS) + list(extra_safe_globals))


def load_weights_only(path: str, map_location: Any, allowed: list[Any]) -> Any:
    """``torch.load(path, weights_only=True)`` trusting exactly the globals in ``allowed``.

    Raises:
        CheckpointError: the file is not a readable torch.save file (``refused`` None), or holds a
            Python object outside ``allowed`` (``refused``: the names found; the message says how to
            allow them, advice that callers without ``extra_safe_globals`` word their own way).
    """
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _refused_globals(path, e, allowed)
        if not unsafe and "Unsupported operand" in str(e):  # not a pickle at all (a text file, ...)
            raise _unreadable(path, e) from e
        what = ", ".join(unsafe) if unsafe else "an object outside the allow-list"
        raise CheckpointError(
            f"checkpoint {path!r} holds {what}, which weights-only loading refuses to unpickle. "
            "If you trust this file, pass the class(es) in extra_safe_globals; otherwise re-save "
            f"it with plain tensors and containers. (torch said: {_first_line(e)})",
            path,
            refused=tuple(unsafe),
        ) from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:  # torch's errors for a non-checkpoint
        raise _unreadable(path, e) from e


def _refused_globals(path: str, error: Exception, allowed: list[Any]) -> list[str]:
    """The names of the classes/functions in ``path`` outside the allow-list."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # torch < 2.6 has no such function, or a legacy-format file: the name torch's message gives
        names = re.findall(r"GLOBAL (\S+?)[ ,.]*(?:was not an allowed|whose module)", str(error))
    allowed_names = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in allowed}
    return [name for name in names if name not in allowed_names]


def _unreadable(path: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path!r} is not a readable torch.save file (truncated, or another format?). "
        f"(torch said: {type(error).__name__}: {_first_line(error)})",
        path,
    )


def _first_line(error: BaseException) -> str:
    """The informative line of torch's message (for weights-only failures, the unpickler's finding)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines if "Unsupported" in line or "Trying to load" in line] or lines
    return lines[0] if lines else ""
