"""Cost of weight sharing: one sandwich step of the supernet vs training its members as static networks.

The sandwich step (largest, smallest, ``train.n_random`` random subnets, every exit, one
optimizer step) is timed against the sum of one training step of each member extracted as a
plain static network (same losses, same batch), in the same process, interleaved so that a
shared machine's load hits both alike, and the fastest round of each is kept. The ratio is the
price of elastic ops (weight slicing, kernel cropping); ideally close to 1.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from bench import bench_line
from nachos.config import load_config
from nachos.runtime import memory_format, resolve_device, seed_everything
from supernet.network import create_supernet
from supernet.space import SearchSpace
from supernet.train import autocast_factory, member_loss, sandwich

REPO = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    cfg = load_config(REPO / "configs" / "cifar10.yaml", ["wandb.mode=disabled"])
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    batch = 32 if quick else cfg.data.batch_size
    reps = 3 if quick else 6
    autocast = autocast_factory(device, cfg.train.amp)
    fmt = memory_format(cfg.train.channels_last, device)  # as training runs on this device

    space = SearchSpace(cfg.space)
    model = create_supernet(cfg).to(device, memory_format=fmt).train()
    members = sandwich(space, max(1, cfg.train.n_random), cfg.seed, step=0)  # at least one random subnet
    statics = [model.extract(arch).to(device, memory_format=fmt).train() for _, arch in members]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    static_opts = [torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True) for net in statics]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.space.in_channels, cfg.space.input_size, cfg.space.input_size, generator=gen)
    x = x.to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, cfg.space.num_classes, (batch,), generator=gen).to(device)

    def sandwich_step() -> None:
        opt.zero_grad(set_to_none=True)
        teacher = None
        for _, arch in members:
            model.set_active(arch)
            loss, res = member_loss(model, arch, x, y, teacher, cfg, None, None, 0, autocast)
            loss.backward()
            teacher = res.final_logits if teacher is None else teacher
        opt.step()

    def static_steps() -> list[float]:
        times, teacher = [], None
        for (_, arch), net, o in zip(members, statics, static_opts):
            def one() -> None:
                nonlocal teacher
                o.zero_grad(set_to_none=True)
                loss, res = member_loss(net, arch, x, y, teacher, cfg, None, None, 0, autocast)
                loss.backward()
                o.step()
                teacher = res.final_logits if teacher is None else teacher
            times.append(_timed(one, device))
        return times

    sandwich_step(), static_steps()  # warm-up (allocator, oneDNN / cuDNN kernel choice)
    t_sandwich, t_static, per_member = [], [], []
    for _ in range(reps):
        t_sandwich.append(_timed(sandwich_step, device))
        parts = static_steps()
        per_member.append(parts)
        t_static.append(sum(parts))
    # the fastest of the rounds: on a shared machine, the round least disturbed by other work
    ts, tt = min(t_sandwich), min(t_static)
    names = [n for n, _ in members]
    fastest = [min(p[i] for p in per_member) for i in range(len(members))]
    print(f"# device {device}, batch {batch}, members {', '.join(names)}")
    print(f"# sandwich step {ts * 1e3:.1f} ms ({batch / ts:.0f} images/s); static members summed "
          f"{tt * 1e3:.1f} ms ({batch / tt:.0f} images/s): "
          + ", ".join(f"{n} {m * 1e3:.1f} ms" for n, m in zip(names, fastest)))
    bench_line("sandwich_step_overhead", ts / tt, "x", "<=", 1.2)
