"""Shared test settings.

One intra-op thread per test: on a small shared machine torch's default (one thread per core)
oversubscribes the CPU and made the model tests ~20x slower (111 s vs 5 s measured on 2 cores).
Restored after each test, since the trainer may set its own thread count.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
