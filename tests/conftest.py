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


@pytest.fixture
def interrupted(monkeypatch):
    """Run a training call that stops, as Ctrl-C would, right after its first per-epoch checkpoint."""
    import eval.fit as fit

    real_save = fit.save_checkpoint

    def save_then_crash(state, path):
        real_save(state, path)
        raise KeyboardInterrupt

    def run(fn, *args, **kwargs):
        monkeypatch.setattr(fit, "save_checkpoint", save_then_crash)
        try:
            with pytest.raises(KeyboardInterrupt):
                fn(*args, **kwargs)
        finally:
            monkeypatch.setattr(fit, "save_checkpoint", real_save)

    return run
