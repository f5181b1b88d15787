"""egoattn.memory: freed activations are reused instead of being faulted in again at every call."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

# Allocate and free a 64 MiB array (above glibc's largest default mmap threshold, 32 MiB) 40 times
# and print the minor page faults that cost.
CHILD = """
import resource, sys
import numpy as np
from egoattn.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    a = np.ones(64 << 20, dtype=np.uint8)
    del a
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_allocations() -> None:
    _, default = _faults("default")
    kept, tuned = _faults("keep")
    assert kept == "True"
    # By default every array faults its pages in again (16384 of 4 KiB, or about 500 with transparent
    # huge pages); kept, only the first one does.
    assert default > 40 * 100, default
    assert tuned < default / 10, (default, tuned)


def test_denormal_floats_are_flushed_to_zero() -> None:
    """egoattn processes (the command, its workers, this suite) flush denormals: on Intel CPUs each
    product touching one was 10x slower (egoattn.denormals)."""
    from egoattn.denormals import flush_denormals

    if not flush_denormals():
        pytest.skip("this CPU cannot flush denormals")
    x = torch.full((4,), 1e-39, dtype=torch.float32)  # below float32's normal range (1.2e-38)
    assert torch.count_nonzero(x * 1.0) == 0
    torch.set_flush_denormal(False)
    try:
        assert torch.count_nonzero(torch.full((4,), 1e-39) * 1.0) == 4
    finally:
        flush_denormals()
