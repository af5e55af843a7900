"""The one training loop of the networks trained after the search: fine-tuned exports
(``eval.finetune``) and static baselines (``eval.baselines``).

Both train one fixed network with SGD / AdamW and a per-step warm-up cosine schedule, save an
atomic checkpoint after every epoch and resume it when its fingerprint matches; they differ only
in the loss of a batch, which the caller passes as ``batch_loss``. (The supernet's sandwich loop,
``supernet.train``, trains many subnets per step and keeps its own.)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from nachos.config import TrainConfig
from nachos.runtime import RunError, atomic_torch_save, resume_training, rng_state
from supernet.train import warmup_cosine

# (images, labels, step) -> (loss with graph, final logits for the training accuracy or None)
BatchLoss = Callable[[torch.Tensor, torch.Tensor, int], "tuple[torch.Tensor, torch.Tensor | None]"]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """One atomic write per epoch (a module function so that tests can interrupt right after it)."""
    atomic_torch_save(state, path)


def fit(net: torch.nn.Module, loader: Any, batch_loss: BatchLoss, *, tc: TrainConfig, lr: float, epochs: int,
        warmup_epochs: float, ckpt_path: Path, fingerprint: str, desc: str, lr_hint: str,
        fmt: torch.memory_format, device: torch.device, frozen: list[torch.nn.Module] | None = None,
        extra_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``net`` in place for ``epochs`` over ``loader``; resume ``ckpt_path`` when it holds
    ``fingerprint``. Modules in ``frozen`` get no gradient and stay in eval mode (their BN
    statistics keep their values). ``extra_state`` is stored in every checkpoint as it is.
    Returns the steps, training seconds and per-epoch history."""
    from timm.optim import create_optimizer_v2
    from tqdm import tqdm

    frozen, extra_state = frozen or [], extra_state or {}
    for m in frozen:
        m.requires_grad_(False)
    optimizer = create_optimizer_v2(net, opt="sgd" if tc.optimizer == "sgd" else "adamw", lr=lr,
                                    weight_decay=tc.weight_decay, momentum=tc.momentum)
    # stateless between steps (step_update sets the rate from the step), so checkpoints need not hold it
    scheduler = warmup_cosine(optimizer, lr, epochs * len(loader), warmup_epochs, len(loader))
    step, start, seconds, history = 0, 0, 0.0, []
    ckpt = resume_training(ckpt_path, fingerprint, {"model": net, "optimizer": optimizer, "loader": loader})
    if ckpt is not None:
        step, start, seconds, history = ckpt["step"], ckpt["epoch"], ckpt["seconds"], ckpt["history"]
        print(f"resuming {desc} at epoch {start}/{epochs} ({ckpt_path})", file=sys.stderr)
    params = [p for p in net.parameters() if p.requires_grad]
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        for m in frozen:
            m.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        hits = torch.zeros((), dtype=torch.int64, device=device)
        seen = counted = 0
        for x, y in tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                         disable=not sys.stderr.isatty()):
            scheduler.step_update(step)
            optimizer.zero_grad(set_to_none=True)
            loss, logits = batch_loss(x.contiguous(memory_format=fmt), y, step)
            if not torch.isfinite(loss):
                raise RunError(f"{desc}: non-finite loss at step {step} (epoch {epoch + 1}); {lr_hint}")
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            if logits is not None:
                hits += (logits.detach().argmax(1) == y).sum()
                counted += len(y)
        elapsed = time.perf_counter() - t0
        seconds += elapsed
        row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(seen, 1)}
        if counted:  # a final classifier taught by a teacher has no label accuracy worth logging
            row["train_accuracy"] = float(hits) / counted
        history.append({**row, "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed})
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "loader": loader.state_dict(),
                 "rng": rng_state(), "step": step, "epoch": epoch + 1, "seconds": seconds, "history": history,
                 "fingerprint": fingerprint}
        if clash := state.keys() & extra_state.keys():
            raise ValueError(f"extra_state would overwrite the checkpoint's own keys {sorted(clash)}")
        save_checkpoint({**state, **extra_state}, ckpt_path)
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in row.items() if k != "epoch")
        print(f"{desc} epoch {epoch + 1}/{epochs}: {shown}, {elapsed:.0f} s", file=sys.stderr, flush=True)
    net.eval()
    return {"steps": step, "train_seconds": seconds, "history": history}
