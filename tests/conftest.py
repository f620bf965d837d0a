"""Shared test settings.

One intra-op thread per test process: on a small shared machine torch's default (one thread per
core) oversubscribes the CPU and made the model tests ~20x slower (111 s vs 5 s measured on 2 cores).
"""

import torch

torch.set_num_threads(1)
