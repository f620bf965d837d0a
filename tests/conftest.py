"""Shared test settings.

One intra-op thread per test: on a small shared machine torch's default (one thread per core)
oversubscribes the CPU and made the model tests ~20x slower (111 s vs 5 s measured on 2 cores).
Set once for the session too, so module-scoped fixtures (which run before any per-test fixture)
also compute with one thread, as the tests' subprocesses do (OMP_NUM_THREADS=1): the thread count
changes floating-point results bitwise. Restored after each test, since the trainer may set its own.
"""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread_session():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
