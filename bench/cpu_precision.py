"""Precision of training on CPU: a step of the hand-designed early-exit network under bf16 autocast vs fp32.

``train.amp`` turns on bf16 autocast on GPUs only; this checks that choice on the CPU at hand. Even
on a Xeon with AMX bf16 tiles, autocast was 2.1-2.5x slower than fp32 (session 23): the network is
mostly depthwise convolutions and small tensors, where casts cost more than the bf16 kernels save.
Same weights, batch and SGD step in both precisions, channels_last as the loops train, interleaved
after a warm-up; the figure is the ratio of the fastest step times (fp32 / bf16). The goal is
inverted on purpose: below 1, fp32 on CPU is right; at 1 or more, ``train.amp`` should cover CPUs too.
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
    batch, warmup, repeats = (32, 1, 3) if quick else (256, 2, 5)
    cfg, arch, x, y = hand_network_batch(batch)
    x = x.contiguous(memory_format=torch.channels_last)
    steps = {bf16: partial(train_step, *hand_model(cfg, arch, torch.channels_last), x, y, bf16)
             for bf16 in (False, True)}
    fastest = fastest_interleaved(steps, warmup, repeats)
    fp32, bf16 = fastest[False], fastest[True]
    print(f"hand network {arch}, exits [1, 2, 3], batch {batch}, fwd+bwd+SGD, channels_last, 1 thread: "
          f"fp32 {fp32 * 1e3:.0f} ms, bf16 autocast {bf16 * 1e3:.0f} ms", flush=True)
    bench_line("cpu_bf16_autocast_speedup", fp32 / bf16, "x", "<", 1)
