"""Fixtures shared by every test file."""

import pytest
import torch

from egoattn.denormals import flush_denormals
from egoattn.memory import keep_freed_memory

flush_denormals()  # as the egoattn command does (egoattn.denormals)
keep_freed_memory()  # as the egoattn command does (egoattn.memory): the suite's forwards fault in less


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machine has 2 cores shared by many processes: one intra-op thread avoids
    oversubscription (about 4x faster for the small models of the tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
