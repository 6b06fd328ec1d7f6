"""glibc's malloc set up for the repeated large allocations of training and inference on CPU.

A CPU training step allocates and frees the same large tensors every step (the full-size logits, their log-softmax
and their gradients: 20 MB each for ESeg-Lite-S at 4 x 256x256), and inference at 1024x2048 allocates feature maps
of tens of MB for every image. With glibc's defaults, blocks above the mmap threshold are mapped and unmapped each
time, and freeing shrinks the heap (``M_TRIM_THRESHOLD``), so every step or image takes fresh pages from the kernel
and faults on first touch. That costs most in virtual machines that hand freed pages back to the host. Keeping
freed memory in the heap for reuse is exact (no number changes) and is what ``torch.backends.xeon.run_cpu`` gets by
preloading jemalloc or tcmalloc; here it takes three ``mallopt`` calls in the running process: no mmap for
allocations (``M_MMAP_MAX`` 0, so large blocks come from the heap), the heap keeps up to 1 GiB free at its top
(``M_TRIM_THRESHOLD``), and it grows 256 MiB at a time (``M_TOP_PAD``: address space, resident only once touched).

The cost: a process's heap stays at its peak until it exits (freed blocks are reused, not returned), which is
what a training run or a prediction over a folder of images wants. Measured on a 2-core AMD EPYC virtual machine
(``reports/benchmarks/README.md``): ``eseg train --scale lite-s`` 1.17x the images/s; ESeg-Lite-S's Predictor at
1024x2048 up to twice as fast.

The Trainer and the Predictor call :func:`keep_freed_memory` on CPU. ``ESEG_MALLOC=default`` in the environment
leaves malloc as it is; ``ESEG_MALLOC=tuned`` (or unset, or empty) sets it; any other value is refused.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from eseg_cli.errors import EsegError

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
#: what :func:`keep_freed_memory` sets (see the module)
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}
ENV = "ESEG_MALLOC"
#: the values ``ESEG_MALLOC`` takes ("" and unset mean tuned)
CHOICES = ("tuned", "default")

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (see the module). Returns whether it is set.

    Nothing happens, and the answer is False, when ``ESEG_MALLOC=default``, or outside Linux with glibc. Idempotent:
    the process-wide setting is made once. Raises :class:`~eseg_cli.errors.EsegError` for a value of
    ``ESEG_MALLOC`` other than ``tuned`` or ``default`` (a typo would otherwise pick one silently).
    """
    global _state
    if requested() == "default":
        return False
    if _state is not None:
        return _state
    _state = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _state = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _state


def requested() -> str:
    """``ESEG_MALLOC``'s value, ``tuned`` or ``default``; refuses any other."""
    value = os.environ.get(ENV, "").strip().lower() or "tuned"
    if value not in CHOICES:
        raise EsegError(f"environment variable {ENV}={os.environ[ENV]!r}: use {ENV}=tuned (the default: freed memory "
                        f"is kept for reuse) or {ENV}=default (glibc's own malloc settings), or unset it", field=ENV)
    return value


def choose(setting: str) -> bool:
    """For benchmarks, before any model is built: ``"tuned"`` sets malloc as eseg does on CPU; ``"default"`` keeps
    glibc's defaults for the whole process (every later :func:`keep_freed_memory` does nothing). Returns whether
    malloc is tuned."""
    if setting not in CHOICES:
        raise ValueError(f"malloc setting {setting!r}: choose tuned or default")
    os.environ[ENV] = setting
    return setting == "tuned" and keep_freed_memory()
