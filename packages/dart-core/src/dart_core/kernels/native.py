"""Build, load and call DART's compiled CPU kernels (``dart_cpu.c``).

The C source ships with the package and is compiled on first use with the system C compiler
(``$CC``, else ``cc``) into a per-user cache (:func:`cache_dirs`), keyed by a hash of the
sources, the flags and the CPU's instruction sets, so a home directory shared by different
machines never loads a library built for another CPU. Processes that build at once
(``torchrun``) each write a private file and rename it into place. Without a compiler the
library is unavailable and the ``"auto"`` backend falls back to the PyTorch path with one
warning; ``backend="native"`` raises with the compiler's message.

It is built with OpenMP where the compiler has it (gcc; else serial, e.g. Apple clang): the
kernels then split the batch between threads themselves, on the ``libgomp.so.1`` torch has
already loaded, i.e. torch's own OpenMP threads and ``torch.set_num_threads``. (A pool of
Python threads calling the kernels was measured first: torch's idle OpenMP threads keep
spinning on the cores after each op and slowed it by a third.) Calls go through ctypes on
contiguous tensors' data pointers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCES = ("dart_cpu.c", "dart_cpu_kernels.h", "dart_cpu_window.h")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c11")
OPENMP = ("-fopenmp",)  # tried first; a compiler without OpenMP builds the serial library
FUNCTIONS = {  # name → argument kinds: p = pointer (or None), i = int64 (the batch, then sizes)
    "dart_patch_forward": "pppppp" + "i" * 7,
    "dart_patch_backward": "ppppppppp" + "i" * 7,
    "dart_interval_integral": "ppp" + "i" * 4,
    "dart_interval_integral_backward": "ppppp" + "i" * 4,
}
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}


class NativeUnavailable(RuntimeError):
    """The compiled CPU kernels cannot be built or loaded here."""


class CompileError(NativeUnavailable):
    """The compiler rejected the source with these flags."""


def _cpu_signature() -> str:
    """The CPU model and flag set (Linux), or the platform's machine name elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("flags", "model name", "Features"))]
    return "\n".join(sorted(set(keep)))


def cache_dirs() -> list[Path]:
    """Where built libraries may be kept, in order: ``$DART_KERNEL_CACHE`` alone when set, else
    ``$XDG_CACHE_HOME/dart_core`` (``~/.cache/dart_core``), then a per-user temporary directory."""
    root = os.environ.get("DART_KERNEL_CACHE")
    if root:
        return [Path(root)]
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dart_core"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [user_cache, Path(tempfile.gettempdir()) / f"dart_core-{uid}"]


def _trusted(directory: Path) -> bool:
    """Whether a shared-temp cache directory is ours alone (another user could plant a library)."""
    if not hasattr(os, "getuid") or not directory.is_relative_to(tempfile.gettempdir()):
        return True
    info = directory.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def _compiler() -> list[str]:
    """The compiler command (``$CC`` may carry arguments, e.g. ``ccache cc``)."""
    command = shlex.split(os.environ.get("CC", "cc"))
    if not command or shutil.which(command[0]) is None:
        raise NativeUnavailable(
            f"no C compiler ({os.environ.get('CC', 'cc')!r} not found): install gcc or clang, or set CC, to build "
            "DART's CPU kernels; the PyTorch path (backend='torch') needs none"
        )
    return command


def build() -> Path:
    """Compile ``dart_cpu.c`` into the cache (once per source, flags and CPU); returns the library.

    With OpenMP when the compiler supports it, else without (a compiler without OpenMP fails that
    attempt once per process, before the serial library is found or built)."""
    compiler = _compiler()
    try:
        return _build(compiler, FLAGS + OPENMP)
    except CompileError:
        return _build(compiler, FLAGS)


def _build(compiler: list[str], flags: tuple[str, ...]) -> Path:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update((here / source).read_bytes())
    digest.update(" ".join((*compiler, *flags, _cpu_signature())).encode())
    name = f"dart_cpu-{digest.hexdigest()[:16]}.so"
    problems = []
    for directory in cache_dirs():
        target = directory / name
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _trusted(directory):
                problems.append(f"{directory}: not owned by this user alone")
                continue
            if target.exists():
                return target
            handle, partial = tempfile.mkstemp(prefix=f"{target.stem}-", suffix=".partial", dir=directory)
            break
        except OSError as error:
            problems.append(f"{directory}: {error}")
    else:
        raise NativeUnavailable(
            f"no writable cache for DART's CPU kernels ({'; '.join(problems)}); set DART_KERNEL_CACHE to a "
            "writable directory"
        )
    os.close(handle)
    try:
        result = subprocess.run([*compiler, *flags, "-o", partial, str(here / "dart_cpu.c")],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(
                f"building DART's CPU kernels failed ({' '.join((*compiler, *flags))}):\n{result.stderr.strip()}"
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.cache
def _load() -> ctypes.CDLL | NativeUnavailable:
    try:
        library = ctypes.CDLL(str(build()))
    except (NativeUnavailable, OSError) as error:
        return error if isinstance(error, NativeUnavailable) else NativeUnavailable(str(error))
    kinds = {"p": ctypes.c_void_p, "i": ctypes.c_int64}
    for name, signature in FUNCTIONS.items():
        for suffix in SUFFIXES.values():
            function = getattr(library, f"{name}_{suffix}")
            function.argtypes = [kinds[kind] for kind in signature]
            function.restype = ctypes.c_int  # nonzero: out of memory for the work buffers
    library.dart_openmp.argtypes, library.dart_openmp.restype = [], ctypes.c_int
    return library


def library() -> ctypes.CDLL:
    """The loaded library; raises :class:`NativeUnavailable` with the reason when it cannot be built."""
    loaded = _load()
    if isinstance(loaded, NativeUnavailable):
        raise loaded
    return loaded


_warned = threading.Event()
_disabled = False


@contextlib.contextmanager
def disabled():
    """Within this block (eager mode), ``"auto"`` picks the PyTorch paths on the CPU: for comparisons."""
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


@torch.compiler.assume_constant_result  # torch.compile runs it once while tracing, not in the graph
def available(warn: bool = False) -> bool:
    """Whether the library can be used (and is not :func:`disabled`); with ``warn``, say once why not."""
    if _disabled:
        return False
    loaded = _load()
    if isinstance(loaded, NativeUnavailable) and warn and not _warned.is_set():
        _warned.set()
        warnings.warn(f"{loaded} — using the slower PyTorch CPU path", RuntimeWarning, stacklevel=3)
    return not isinstance(loaded, NativeUnavailable)


def function(name: str, dtype: torch.dtype):
    """The kernel ``name`` for element type ``dtype`` (float32 or float64)."""
    return getattr(library(), f"{name}_{SUFFIXES[dtype]}")


def pointer(tensor: torch.Tensor | None) -> int | None:
    """A contiguous tensor's data pointer for ctypes (None stays a NULL pointer)."""
    if tensor is None:
        return None
    if not tensor.is_contiguous():
        raise ValueError("native kernels need contiguous tensors")
    return tensor.data_ptr()


def openmp() -> bool:
    """Whether the loaded library splits batches between OpenMP threads."""
    return bool(library().dart_openmp())


def call(kernel, tensors: tuple[torch.Tensor | None, ...], sizes: tuple[int, ...]) -> None:
    """``kernel(*pointers, *sizes)`` on contiguous tensors (None → NULL); sizes start with the batch."""
    if kernel(*map(pointer, tensors), *sizes):
        raise MemoryError(f"{kernel.__name__}: could not allocate its work buffers")
