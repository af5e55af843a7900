"""Shared test settings."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # The suite's tensors are small: intra-op threads gain nothing, and on a busy 2-core
    # machine OpenMP threads waiting on each other made single test files up to 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
