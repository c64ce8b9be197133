"""Keep freed memory in the process while training on the CPU (glibc only).

Measured (benchmarks/finetune_study.md): a CPU fine-tuning run spent a fifth of its CPU time in
the kernel, with 11-15 million minor page faults in 15 minutes. glibc serves every allocation
above 32 MiB (a batch of early activations is larger) with a fresh mmap and returns it with
munmap when freed, so each training step faults in, and zeroes, the same gigabytes again.
With mmap disabled and a high trim threshold, freed blocks go back to malloc's heap and the
next step reuses them. Costs some resident memory (about 15% more peak RSS measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory instead of unmapping it; True if it agreed.

    A no-op (False) elsewhere than Linux/glibc. Process-wide and idempotent.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and others: no mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok &= mallopt(_M_TOP_PAD, 64 << 20) == 1
    return bool(ok)
