"""Memory format of training: a step of the hand-designed early-exit network in channels_last vs NCHW.

Every training loop (supernet, static baselines, fine-tuning) puts its network and batches in
``train.channels_last``; this measures what that buys on the machine at hand. The network is
``configs/cifar10-long.yaml``'s hand-designed backbone with exits 1-3 and cheap heads (the one
the results train jointly); the same weights, batch and SGD step in both formats, interleaved
after a warm-up, and the figure is the ratio of the fastest step times (NCHW / channels_last).
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import bench_line, fastest_interleaved, one_thread
from eval.baselines import hand_designed_arch
from nachos.config import load_config
from supernet.space import SearchSpace
from supernet.static import StaticEENet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10-long.yaml"


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    sum(F.cross_entropy(o, y) for o in model(x)).backward()
    opt.step()
    return time.perf_counter() - start


@one_thread()
def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    batch, warmup, repeats = (32, 1, 3) if quick else (256, 2, 7)
    cfg = load_config(CONFIG, ["exits.head_max_map=4"], device_type="cpu")
    arch = hand_designed_arch(SearchSpace.from_config(cfg.space))
    x = torch.randn(batch, cfg.space.in_channels, cfg.space.input_size, cfg.space.input_size)
    y = torch.randint(0, cfg.space.num_classes, (batch,))
    runs = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = StaticEENet.from_config(cfg.space, cfg.exits, arch, [1, 2, 3]).train().to(memory_format=fmt)
        runs[fmt] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x.contiguous(memory_format=fmt))
    fastest = fastest_interleaved({fmt: partial(_step, model, opt, xb, y) for fmt, (model, opt, xb) in runs.items()},
                                  warmup, repeats)
    nchw, nhwc = fastest[torch.contiguous_format], fastest[torch.channels_last]
    print(f"hand network {arch}, exits [1, 2, 3], batch {batch}, fwd+bwd+SGD, 1 thread: "
          f"NCHW {nchw * 1e3:.0f} ms, channels_last {nhwc * 1e3:.0f} ms", flush=True)
    bench_line("train_step_channels_last_speedup", nchw / nhwc, "x", ">=", 1.3)
