"""Memory format of training: a step of the hand-designed early-exit network in channels_last vs NCHW.

Every training loop (supernet, static baselines, fine-tuning) puts its network and batches in
``train.channels_last``; this measures what that buys on the machine at hand. The step is
``bench._hand_step``'s; the same weights, batch and SGD step in both formats, interleaved
after a warm-up, and the figure is the ratio of the fastest step times (NCHW / channels_last).
"""
from __future__ import annotations

import argparse
from functools import partial

import torch

from bench import bench_line, fastest_interleaved, one_thread
from bench._hand_step import hand_model, hand_network_batch, train_step


@one_thread()
def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    batch, warmup, repeats = (32, 1, 3) if quick else (256, 2, 7)
    cfg, arch, x, y = hand_network_batch(batch)
    steps = {fmt: partial(train_step, *hand_model(cfg, arch, fmt), x.contiguous(memory_format=fmt), y)
             for fmt in (torch.contiguous_format, torch.channels_last)}
    fastest = fastest_interleaved(steps, warmup, repeats)
    nchw, nhwc = fastest[torch.contiguous_format], fastest[torch.channels_last]
    print(f"hand network {arch}, exits [1, 2, 3], batch {batch}, fwd+bwd+SGD, 1 thread: "
          f"NCHW {nchw * 1e3:.0f} ms, channels_last {nhwc * 1e3:.0f} ms", flush=True)
    bench_line("train_step_channels_last_speedup", nchw / nhwc, "x", ">=", 1.3)
