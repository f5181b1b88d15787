"""Worker processes that start clean, for data loaders and the parallel `prepare` / `synth` pools.

OpenCV's thread pool does not survive fork(): a child forked while the parent's pool has threads
inherits condition variables with waiters that no longer exist, and its first `cv2.setNumThreads` (or
any parallel cv2 call) waits forever (opencv/opencv#5150). A training process has usually run cv2 in
threads before its loaders start (transforms, flow, decoding), so workers are started from the
forkserver, a clean process that imports torch and cv2 once and then forks cheaply. Where there is no
forkserver (Windows, macOS builds without it) the platform's default, spawn, is clean as well.
"""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from typing import Iterator

import cv2
import torch

from egoattn.denormals import flush_denormals
from egoattn.memory import keep_freed_memory

#: Imported once in the forkserver, so that each worker starts without importing them again.
PRELOAD = ["torch", "cv2", "numpy", "egoattn.data.dataset"]


def worker_context() -> BaseContext:
    """The multiprocessing context for every worker egoattn starts (never a plain fork)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # no effect once the server runs; harmless then
        return ctx
    return multiprocessing.get_context("spawn")


def one_thread_per_worker(*_: object) -> None:
    """Worker initialiser (Pool `initializer` or DataLoader `worker_init_fn`): each worker is one process
    on a shared machine, so no nested thread pools in OpenCV or torch; freed memory is reused (egoattn.memory)."""
    keep_freed_memory()
    flush_denormals()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@contextmanager
def one_thread_here() -> Iterator[None]:
    """Inside, this process computes as one worker would (one OpenCV and one torch thread, so a job run
    in-process gives a worker's results); after, the caller's thread counts are back. `generate_synthetic`
    runs its clips this way when it needs no pool, then `egoattn demo` trains in the same process."""
    cv_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    one_thread_per_worker()
    try:
        yield
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)
