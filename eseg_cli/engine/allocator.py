"""glibc's malloc set up for a training loop's repeated large allocations on CPU.

A CPU training step allocates and frees the same large tensors every step (the full-size logits, their
log-softmax and their gradients: 20 MB each for ESeg-Lite-S at 4 x 256x256). With glibc's defaults, freeing them
shrinks the heap (``M_TRIM_THRESHOLD``), so the next step's allocations take fresh pages from the kernel and fault
on first touch, every step. That costs most in virtual machines that hand freed pages back to the host. Keeping freed
memory in the heap is exact (no number changes) and is what ``torch.backends.xeon.run_cpu`` gets by preloading
jemalloc or tcmalloc; here it takes three ``mallopt`` calls in the running process.

Measured on a 2-core AMD EPYC virtual machine (``reports/benchmarks/README.md``): ESeg-Lite-S's training step at
4 x 256x256, bf16, about 120 against 100 ms. The resident memory of that run did not grow (about 1.24 GB both ways).

``ESEG_MALLOC=default`` in the environment leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: what :func:`keep_freed_memory` sets: glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2), so tensors up
#: to 32 MiB come from the heap; the heap keeps up to 1 GiB free at its top; and it grows 256 MiB at a time
#: (address space, not resident memory, until touched)
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}
ENV = "ESEG_MALLOC"

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (see the module). Returns whether it is set.

    Nothing happens, and the answer is False, when ``ESEG_MALLOC=default``, or outside Linux with glibc. Idempotent:
    the process-wide setting is made once.
    """
    global _state
    if os.environ.get(ENV, "tuned").strip().lower() == "default":
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
