"""One torch CPU thread for tests that run a model in the test process.

Every provider process the tests start computes on one thread (``--threads 1``). Torch's
default in the test process, a thread per core, spins on a shared two-core machine: with
other work on it, the provider tests took two to three minutes instead of half of one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one CPU thread inside; the process's setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
