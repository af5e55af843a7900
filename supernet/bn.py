"""BatchNorm recalibration: running statistics re-estimated for one subnet.

Shared BN statistics of a weight-sharing supernet belong to no subnet in particular, so every
subnet is scored after re-estimating the stats of the BN layers *it* uses on a few training
batches (OFA / BigNAS). The estimate is a cumulative average over the batches
(``momentum=None``): independent of batch order up to rounding, and exactly reproducible.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def _as_input(batch: torch.Tensor | tuple | list) -> torch.Tensor:
    # accept loader batches of (images, labels) as well as bare image tensors
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int | None = None) -> int:
    """Reset and re-estimate the running stats of every BN layer ``model`` uses in its forward
    (for a supernet: the active arch's backbone and exits; only the channel slice it uses).

    ``batches`` yield model-ready float inputs (or ``(inputs, labels)``); the first
    ``num_batches`` are used (None: all of them). Momentum and train / eval modes are restored
    afterwards. Returns the number of batches used.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"recalibrate_bn: num_batches must be >= 1, got {num_batches}")
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = {m: m.momentum for m in bns}
    modes = {m: m.training for m in model.modules()}
    seen: set[nn.Module] = set()

    def reset_on_first_use(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        # a supernet BN may run on its first c channels only: reset just that slice, so the
        # stats of channels this subnet never touches stay as they were
        if module in seen:
            return
        seen.add(module)
        c = inputs[0].shape[1]
        module.running_mean[:c].zero_()
        module.running_var[:c].fill_(1.0)
        module.num_batches_tracked.zero_()

    hooks = [m.register_forward_pre_hook(reset_on_first_use) for m in bns]
    device = next(model.parameters()).device
    used = 0
    try:
        for m in bns:
            m.momentum = None
        model.train()
        for batch in itertools.islice(batches, num_batches):
            model(_as_input(batch).to(device, non_blocking=True))
            used += 1
    finally:
        for h in hooks:
            h.remove()
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    if used == 0:
        raise ValueError("recalibrate_bn: no batches to recalibrate on")
    return used
