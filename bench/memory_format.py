"""Memory format of training: a step of the hand-designed early-exit network in channels_last vs NCHW.

Every training loop (supernet, static baselines, fine-tuning) puts its network and batches in
``train.channels_last``; this measures what that buys on the machine at hand. The network is
``configs/cifar10-long.yaml``'s hand-designed backbone with exits 1-3 and cheap heads (the one
the results train jointly); the same weights, batch and SGD step in both formats, interleaved
after a warm-up, and the figure is the ratio of the fastest step times (NCHW / channels_last).
"""
from __future__ import annotations

import argparse
import contextlib
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import bench_line, fastest_interleaved, one_thread
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


@one_thread()
def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    batch, warmup, repeats = (32, 1, 3) if quick else (256, 2, 7)
    cfg, arch, x, y = hand_network_batch(batch)
    runs = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = StaticEENet.from_config(cfg.space, cfg.exits, arch, [1, 2, 3]).train().to(memory_format=fmt)
        runs[fmt] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x.contiguous(memory_format=fmt))
    steps = {fmt: partial(train_step, model, opt, xb, y) for fmt, (model, opt, xb) in runs.items()}
    fastest = fastest_interleaved(steps, warmup, repeats)
    nchw, nhwc = fastest[torch.contiguous_format], fastest[torch.channels_last]
    print(f"hand network {arch}, exits [1, 2, 3], batch {batch}, fwd+bwd+SGD, 1 thread: "
          f"NCHW {nchw * 1e3:.0f} ms, channels_last {nhwc * 1e3:.0f} ms", flush=True)
    bench_line("train_step_channels_last_speedup", nchw / nhwc, "x", ">=", 1.3)
