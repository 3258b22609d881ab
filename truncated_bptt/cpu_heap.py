"""Keep freed memory in the process when training on CPU (glibc's ``mallopt``), so that steps stop
page-faulting their large tensors in anew.

Every CPU training step frees and allocates again tensors of tens of MB: the gradients of the
vocabulary-sized tables (``[n_token, d_model]``: 34 MB at WikiText's 33k words and d_model 256), the
tail clusters' logits and gradients, the attention scores. glibc serves blocks above its mmap
threshold (128 KiB, raised dynamically only up to 32 MiB) with a fresh ``mmap`` and returns them to
the kernel on ``free``, so every step takes those pages again one fault at a time, the kernel zeroing
each: thousands of minor faults a step (tests/test_cpu_heap.py counts them for one such block).

:func:`keep_freed_memory` raises the mmap threshold and the heap trim threshold to 1 GiB, so such
blocks stay in the heap and are reused. The peak resident size is the same (freed memory is reused,
not added to); what changes is that the resident size no longer shrinks after a peak. Blocks of 1 GiB
and more are still mapped and unmapped as before. The setting is process-wide, like TF32
(:mod:`truncated_bptt.tf32`); the task applies it at its first training step on CPU unless
``--release-freed-memory``. GPU runs are left alone (their tensors live in PyTorch's CUDA caching
allocator), and so is scoring: fairseq-eval-lm frees the loaded checkpoint's tensors before it
scores, and keeping those in the heap raised its peak resident size in a benchmark run, while
its steps allocate little.

Scoring goes the other way: :func:`return_freed_memory` hands the pages of the heap's free blocks
back to the kernel (``malloc_trim``) once, when fairseq-eval-lm's scoring starts. Loading the
checkpoint (model, optimizer state, ...) left tens of MB of freed blocks in the heap; without the
trim the scoring steps' own allocations and fragments come on top of them, and the peak resident
size of the whole run can be set by scoring instead of by loading.
"""
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from typing import Optional

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BELOW_BYTES = 1 << 30

_applied = False


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc's C library, or None (musl, macOS, Windows, ...); looked up once per process
    (``find_library`` runs a subprocess)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Keep freed blocks below 1 GiB in the heap (once per process). Returns whether it is set;
    where the C library is not glibc it does nothing and says so in one log line."""
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        logger.info("keep-freed-memory: not glibc (%s), the allocator is left as it is",
                    platform.libc_ver()[0] or platform.system())
        return False
    if not (libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW_BYTES)
            and libc.mallopt(M_TRIM_THRESHOLD, KEEP_BELOW_BYTES)):
        logger.info("keep-freed-memory: glibc refused the thresholds, the allocator is left as it is")
        return False
    _applied = True
    logger.info("keep-freed-memory: freed CPU blocks below 1 GiB stay in the heap "
                "(--release-freed-memory to turn off)")
    return True


def _resident_mib() -> Optional[float]:
    """This process's resident size in MiB (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def return_freed_memory() -> bool:
    """Give the pages of the heap's free blocks back to the kernel (glibc's ``malloc_trim(0)``;
    only free memory, nothing in use). Returns whether any was returned; logs the resident size
    before and after. Where the C library is not glibc it does nothing."""
    libc = _glibc()
    if libc is None:
        return False
    before = _resident_mib()
    returned = bool(libc.malloc_trim(0))
    after = _resident_mib()
    if returned and before is not None and after is not None:
        logger.info("returned freed heap memory to the system: resident %.0f -> %.0f MiB", before, after)
    return returned
