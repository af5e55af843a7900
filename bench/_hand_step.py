"""The training step two benchmarks time (``memory_format``, ``cpu_precision``): one SGD step of the
hand-designed network of ``configs/cifar10-long.yaml`` with exits 1-3 and cheap heads, the one the
results train jointly. The leading underscore keeps ``python -m bench`` from running it as a benchmark."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from eval.baselines import hand_designed_arch
from nachos.config import Config, load_config
from supernet.space import Arch, SearchSpace
from supernet.static import StaticEENet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10-long.yaml"


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               bf16: bool = False) -> float:
    """Seconds of one SGD step on the sum of every exit's cross-entropy, optionally under CPU bf16 autocast."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        outputs = model(x)
    sum(F.cross_entropy(o.float(), y) for o in outputs).backward()
    opt.step()
    return time.perf_counter() - start


def hand_network_batch(batch: int) -> tuple[Config, Arch, torch.Tensor, torch.Tensor]:
    """The results' hand-designed network (cheap heads) and a random NCHW batch for it."""
    cfg = load_config(CONFIG, ["exits.head_max_map=4"], device_type="cpu")
    arch = hand_designed_arch(SearchSpace.from_config(cfg.space))
    x = torch.randn(batch, cfg.space.in_channels, cfg.space.input_size, cfg.space.input_size)
    return cfg, arch, x, torch.randint(0, cfg.space.num_classes, (batch,))


def hand_model(cfg: Config, arch: Arch, memory_format: torch.memory_format) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The network with exits [1, 2, 3] from seed 0 (the same weights for every variant timed) and its SGD."""
    torch.manual_seed(0)
    model = StaticEENet.from_config(cfg.space, cfg.exits, arch, [1, 2, 3]).train().to(memory_format=memory_format)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
