"""Keep freed memory for reuse instead of handing it back to the kernel at every free (glibc only).

glibc serves every allocation above its mmap threshold (at most 32 MiB, adjusted dynamically) with a
fresh `mmap` and returns it with `munmap` on free, and trims the heap top above 128 KiB. A CNN forward
allocates and frees activations of tens of MiB per layer, so each call faults in and zeroes the same
pages again: measured on this project's 2-core machine, encoding 80 frames of EfficientNet-Lite0 at
160 px took 15 s with 10.5 s of it in the kernel (2.4 M page faults); with both thresholds raised it
took 5.7 s (1.7 s in the kernel, 0.3 M faults). The cost is that freed memory below the thresholds
stays in the process, so the resident size stays near its peak instead of dropping between calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # allocations up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to `limit` bytes for this process (and processes forked
    after the call). Returns False, changing nothing, where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl / macOS have no such symbol
    except (OSError, AttributeError, TypeError):
        log.debug("not glibc (%s): malloc thresholds left as they are", name)
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(limit))) and bool(mallopt(_M_TRIM_THRESHOLD, int(limit)))
    log.debug("glibc %s: mallopt thresholds %d -> %s", gnu_get_libc_version().decode(), limit, ok)
    return ok
