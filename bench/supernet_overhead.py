"""Cost of elasticity: a training step of the supernet's largest subnet vs its static copy.

Both run forward + backward on the same batch, with every exit head attached, in training
mode, interleaved in the same process after a warm-up; the figure is the ratio of the fastest
step times (elastic / static): on a shared machine other processes only ever add time, so the
minimum is the steadiest estimate of each network's own cost. The static network is what
extraction produces, so the ratio is the price of slicing shared weights per forward.
"""
from __future__ import annotations

import argparse
import random
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from bench import bench_line, fastest_interleaved, one_thread
from nachos.config import load_config
from supernet.network import create_supernet
from supernet.space import Arch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml"


def _step(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum(o.float().mean() for o in outs if o is not None).backward()
    return time.perf_counter() - start


def _ratio(supernet: nn.Module, arch: Arch, x: torch.Tensor, warmup: int, repeats: int) -> tuple[float, float]:
    """Fastest step time of the supernet running ``arch`` and of its extracted static copy."""
    supernet.set_active(arch)
    static = supernet.extract(arch).train()
    fastest = fastest_interleaved({"elastic": partial(_step, supernet, x), "static": partial(_step, static, x)},
                                  warmup, repeats)
    return fastest["elastic"], fastest["static"]


@one_thread()
def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    batch, warmup, repeats = (16, 1, 3) if quick else (64, 2, 7)
    torch.manual_seed(0)
    cfg = load_config(CONFIG, device_type="cpu")
    supernet = create_supernet(cfg).train()
    x = torch.randn(batch, cfg.space.in_channels, cfg.space.input_size, cfg.space.input_size)
    info = f"batch {batch}, fwd+bwd with {len(supernet.heads)} exits, {torch.get_num_threads()} threads"
    # a mid-size subnet slices every layer: printed for information, the goal is on the largest
    mid = supernet.space.sample(random.Random(0))
    e, s = _ratio(supernet, mid, x, warmup, repeats)
    print(f"random subnet ({info}): elastic {e * 1e3:.1f} ms, static {s * 1e3:.1f} ms, ratio {e / s:.3f}", flush=True)
    e, s = _ratio(supernet, supernet.space.largest(), x, warmup, repeats)
    print(f"largest subnet ({info}): elastic {e * 1e3:.1f} ms, static {s * 1e3:.1f} ms", flush=True)
    bench_line("supernet_elastic_overhead", e / s, "x", "<=", 1.15)
