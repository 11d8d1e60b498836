"""The C allocator's settings for a process that runs spiking networks on the CPU.

A spiking layer's forward and backward allocate several ``[T, B, ...]`` tensors of a few MiB
each per step and free them at the end of it. glibc serves blocks that large by ``mmap`` and
gives freed memory back to the system (``munmap``, heap trimming), so every step page-faults its
tensors in afresh: on Fashion-MNIST that was 15-35% of an attack step on one CPU thread
(``scripts/bench.py``'s docstring; the README's evaluation times). Keeping freed memory in the
process's heap removes it. The cost is memory that stays mapped at its peak (one step's
temporaries), which the process would use again at its next step anyway.
"""
import ctypes
import ctypes.util
import sys

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit): blocks larger than
# that are still mapped and unmapped, which is rare enough not to matter.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2 ** 31 - 1


def keep_freed_memory():
    """Ask glibc to serve tensors up to 32 MiB from its heap and never trim it. Returns whether
    the settings were applied (False off Linux/glibc, where nothing is changed)."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
