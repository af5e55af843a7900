"""``nachos supernet``: one-shot sandwich training of the elastic supernet and its exit heads.

Every step trains a *sandwich* of subnets on the same batch (BigNAS): the largest, the
smallest and ``train.n_random`` random ones, gradients summed over all of them, then one
optimizer step. The largest learns from the labels (label smoothing, dropout); every other
subnet learns from the largest's final logits (in-place distillation), or from a mix of those
and the labels (``train.member_label_weight``). Every subnet also trains
all its candidate exits (their mean loss, CE + distillation from its own final classifier), plus
NACHOS's learned-confidence terms when ``exits.criterion=learned``.

Single process, or ``torchrun`` for data parallelism: every rank samples the same subnets and
trains on its own shard of each batch. Rank 0 logs to W&B and writes ``runs/<name>/``:
``config.yaml``, ``last.pt`` (every epoch, and on Ctrl-C / SIGTERM), ``best.pt`` (largest
subnet's validation accuracy) and ``metrics.json``. ``--resume`` continues exactly where
``last.pt`` stopped (same RNG streams, same schedule, mid-epoch included).

    python -m supernet.train --config configs/cifar10.yaml train.epochs=3 [--resume]
    torchrun --nproc_per_node=2 -m supernet.train --config configs/cifar10.yaml
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from exits import losses as exit_losses
from exits.metrics import expected_calibration_error
from exits.policies import class_logits, exit_confidence
from nachos.config import Config, config_to_dict, describe, load_config, save_config, saved_differences
from nachos.data import balanced_pick, calibration_batches, derived_generator, load_splits, make_loader
from nachos.runtime import (RunError, atomic_torch_save, atomic_write_text, ensure_dir, memory_format,
                            resolve_device, rng_state, seed_everything, set_rng_state)
from nachos.tracking import Tracker
from supernet.bn import recalibrate_bn
from supernet.costs import MacTable
from supernet.network import create_supernet, saved_kernel_transform
from supernet.space import Arch, SearchSpace

CHECKPOINT = "last.pt"
BEST = "best.pt"
SIGNAL_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly one-process) data-parallel run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(cfg: Config) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment (nccl on GPU, gloo on CPU)."""
    device = resolve_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world), device


def all_reduce_grads(params: list[nn.Parameter], ddp: Dist) -> None:
    """Average gradients over ranks in one flat all-reduce.

    Not DDP's wrapper: each sandwich member touches a different subset of the shared weights and
    several forward/backward passes share one optimizer step, which DDP's bucket hooks and unused-
    parameter detection handle poorly. Every rank runs the same subnets, so the set of parameters
    with a gradient is the same on every rank and the flat buffers line up.
    """
    if not ddp.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ddp.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_mean(values: torch.Tensor, ddp: Dist) -> torch.Tensor:
    if ddp.active:
        dist.all_reduce(values)
        values /= ddp.world
    return values


# ----------------------------------------------------------------------------- sandwich
def warmup_cosine(optimizer: torch.optim.Optimizer, lr: float, total_steps: int, warmup_epochs: float,
                  steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step schedule of every training here: linear warm-up from 1% of ``lr`` over
    ``warmup_epochs``, then cosine to 1e-3 of it at ``total_steps`` (drive with ``step_update``)."""
    total_steps = max(1, total_steps)
    warmup = min(round(warmup_epochs * steps_per_epoch), total_steps - 1)
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup), lr_min=lr * 1e-3, warmup_t=warmup,
                             warmup_lr_init=lr * 0.01, warmup_prefix=True, t_in_epochs=False)


def sandwich(space: SearchSpace, n_random: int, seed: int, step: int,
             accept: Callable[[Arch], bool] | None = None, max_tries: int = 10_000) -> list[tuple[str, Arch]]:
    """The subnets trained at ``step``: a pure function of (seed, step), so every rank and every
    resumed run draws the same ones without sharing any RNG state.

    ``accept`` restricts the random members (rejection sampling: uniform over the accepted subnets).
    """
    rng = random.Random(f"sandwich:{seed}:{step}")
    members = [("largest", space.largest()), ("smallest", space.smallest())]
    for k in range(n_random):
        members.append((f"random_{k}", draw_subnet(space, rng, accept, max_tries)))
    return members


def draw_subnet(space: SearchSpace, rng: random.Random, accept: Callable[[Arch], bool] | None = None,
                max_tries: int = 10_000) -> Arch:
    """A random subnet that ``accept`` admits (rejection sampling: uniform over the admitted ones)."""
    for _ in range(max_tries):
        arch = space.sample(rng)
        if accept is None or accept(arch):
            return arch
    raise RunError(f"no random subnet accepted in {max_tries} draws; loosen train.random_max_macs")


def validation_subnets(space: SearchSpace, seed: int, accept: Callable[[Arch], bool] | None) -> dict[str, Arch]:
    """The subnets validated each epoch; the random one from where the random members train."""
    return {"largest": space.largest(), "smallest": space.smallest(),
            "random": draw_subnet(space, random.Random(f"val-subnet:{seed}"), accept)}


def budget_filter(cfg: Config, space: SearchSpace, table: MacTable | None) -> Callable[[Arch], bool] | None:
    """``train.random_max_macs`` as a predicate on whole-network MACs read from ``table`` (the run's
    ``shared_mac_table``, which callers build only when there is a budget), or None without one."""
    budget = cfg.train.random_max_macs
    if budget <= 0:
        return None
    smallest = table.backbone_costs(space.smallest())[-1]
    if budget < smallest:
        raise RunError(f"train.random_max_macs={budget:.4g} is below the smallest subnet's {smallest:.4g} MACs; "
                       f"raise it or set it to 0 (no limit)")
    return lambda arch: bool(table.backbone_costs(arch)[-1] <= budget)


def inplace_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    """Soft targets from the largest subnet: KL, or AlphaNet's adaptive alpha-divergence, each scaled
    by T^2 so that the temperature does not change the gradient's scale (nor switching between them)."""
    if kind == "kl":
        return exit_losses.distill_kl(student, teacher, temperature)
    t = temperature
    return alpha_divergence(student.float() / t, teacher.detach().float() / t) * (t * t)


def alpha_divergence(student: torch.Tensor, teacher: torch.Tensor, alpha_min: float = -1.0, alpha_max: float = 1.0,
                     iw_clip: float = 5.0) -> torch.Tensor:
    """AlphaNet (Wang et al. 2021): per sample, the larger of D_{alpha_min} and D_{alpha_max}.

    KL alone lets a small student over- or under-estimate the teacher's uncertainty; taking the
    worse of a mass-covering and a mode-seeking divergence penalises both. Gradients go through
    the student's log-probabilities only, with clipped importance weights (stability).
    """
    q_log = F.log_softmax(student, dim=-1)
    q = q_log.exp().detach()
    # p / q in log space: a probability that underflows to 0 would make 0 * log 0 = NaN
    log_ratio = F.log_softmax(teacher, dim=-1) - q_log.detach()
    ratio = log_ratio.exp()

    def divergence(alpha: float) -> torch.Tensor:
        if abs(alpha) < 1e-3:
            log_c = log_ratio.clamp(max=math.log(iw_clip))
            f, rho = -log_c, log_c - 1.0
            base = 0.0
        elif abs(alpha - 1.0) < 1e-3:
            f, rho, base = ratio * log_ratio, ratio, 0.0
        else:
            iw = ratio.pow(alpha).clamp(0, iw_clip)
            base = 1.0 / alpha / (alpha - 1.0)
            f, rho = iw / alpha / (alpha - 1.0), iw / alpha + base
        value = (q * (f - base)).sum(-1).detach()
        surrogate = -(q * rho * q_log).sum(-1)  # its gradient is the divergence's
        return value + (surrogate - surrogate.detach())  # the divergence's value, the surrogate's gradient

    left, right = divergence(alpha_min), divergence(alpha_max)
    return torch.where(left.detach() > right.detach(), left, right).mean()


# ----------------------------------------------------------------------------- exit costs
def shared_mac_table(cfg: Config, ddp: Dist = Dist()) -> MacTable:
    """The run's calibrated MAC table (``runs/<name>/macs.json``, shared with search), built on first use.
    Every rank must call this: rank 0 builds and saves it, the others read it after a barrier."""
    table = MacTable.from_config(cfg) if ddp.main else None
    if ddp.active:
        dist.barrier()
    return table if table is not None else MacTable.from_config(cfg)


class ExitCosts:
    """Cumulative MACs of leaving at each candidate exit of an arch, then at the final classifier,
    as (E + 1,) tensors for the learned criterion's MACs regulariser, read from ``table`` (see
    ``shared_mac_table``), which sums exact per-module ptflops counts.
    """

    def __init__(self, space: SearchSpace, table: MacTable) -> None:
        self.space, self.table = space, table
        # the largest and smallest recur every step; random members rarely do (a whole run would
        # keep tens of thousands of them), and the table's own cache holds their entries
        self.cache: dict[Arch, torch.Tensor] = {a: self._costs(a) for a in (space.largest(), space.smallest())}

    def _costs(self, arch: Arch) -> torch.Tensor:
        return torch.as_tensor(self.table.exit_costs(arch, self.space.available_exits(arch)), dtype=torch.float32)

    def __call__(self, arch: Arch) -> torch.Tensor:
        cached = self.cache.get(arch)
        return cached if cached is not None else self._costs(arch)


# ----------------------------------------------------------------------------- support set
class SupportSet:
    """NACHOS's support set: a class-balanced share of train, redrawn every epoch after the first.

    Each step, each subnet measures its exits' per-class accuracy S on one batch of it (no grad),
    and the support term pulls each sample's confidences towards S[y]. Batches are drawn from a
    generator seeded by (seed, step), so a resumed run sees the same ones.
    """

    def __init__(self, cfg: Config, x: torch.Tensor, y: torch.Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], device: torch.device) -> None:
        self.cfg, self.x, self.y, self.device = cfg, x, y, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.index = torch.empty(0, dtype=torch.long)

    def redraw(self, epoch: int) -> None:
        n = max(self.cfg.space.num_classes, round(self.cfg.exits.support_fraction * len(self.y)))
        self.index = balanced_pick(self.y, n, self.cfg.space.num_classes,
                                   derived_generator(self.cfg.seed, f"support:{epoch}"))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = derived_generator(self.cfg.seed, f"support-batch:{step}")
        n = min(self.cfg.data.batch_size, len(self.index))
        pick = self.index[torch.randperm(len(self.index), generator=gen)[:n]]
        x = (self.x[pick].to(self.device).float() / 255.0 - self.mean) / self.std
        return x, self.y[pick].to(self.device)


@torch.no_grad()
def support_matrix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """S[k, i]: accuracy of the active subnet's exit i on the support samples of class k."""
    outs = [o for o in model(x)[:-1] if o is not None]
    correct = torch.stack([class_logits(o, "learned").argmax(-1) == y for o in outs])
    return exit_losses.support_accuracy(correct, y, num_classes)


# ----------------------------------------------------------------------------- one member
@dataclass
class MemberResult:
    loss: torch.Tensor  # detached total
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    final_logits: torch.Tensor | None = None


def member_loss(model: nn.Module, arch: Arch, x: torch.Tensor, y: torch.Tensor,
                teacher: torch.Tensor | None, cfg: Config, costs: ExitCosts | None,
                support: SupportSet | None, step: int, autocast: Any,
                label_weight: float = 0.0) -> tuple[torch.Tensor, MemberResult]:
    """Forward one sandwich member and return its loss (with graph) and what to log. Its final
    classifier learns from ``teacher``'s logits, mixed with ``label_weight`` of the labels' loss,
    or from the labels alone when there is no teacher."""
    tc, ec = cfg.train, cfg.exits
    learned = ec.criterion == "learned"
    S = None
    if learned and support is not None and ec.w_support > 0:
        xs, ys = support.batch(step)
        with autocast():
            S = support_matrix(model, xs, ys, cfg.space.num_classes)
    with autocast():
        outs = model(x)
    exit_ids = [i for i, o in enumerate(outs[:-1]) if o is not None]  # positions this arch has
    exits, final = [outs[i].float() for i in exit_ids], outs[-1].float()
    w_labels = 1.0 if teacher is None else label_weight  # the largest learns from the labels alone
    main = w_labels * F.cross_entropy(final, y, label_smoothing=tc.label_smoothing) if w_labels > 0 else 0.0
    if w_labels < 1:
        main = main + (1 - w_labels) * inplace_distill_loss(final, teacher, tc.kd_temperature, tc.kd_loss)
    ex = exit_losses.exit_loss(exits, final, y, w_ce=ec.w_ce, w_distill=ec.w_distill,
                               temperature=tc.kd_temperature, criterion=ec.criterion)
    # The exits share one unit of weight (their mean, not their sum): with block-level positions a
    # subnet has a dozen heads, and even four summed swamp the final classifier's gradient in the
    # shared backbone (85% of the largest's loss on CIFAR-10 in the first epochs).
    loss = main + ex["total"] / max(1, len(exits))
    terms = {"final": main.detach()}
    terms.update({f"exit_{pos}/loss": ex[f"exit_{j}/loss"] for j, pos in enumerate(exit_ids)})
    if learned and exits:
        lt = exit_losses.learned_exit_terms(
            exits, y, final_logits=final, costs=None if costs is None else costs(arch), max_macs=ec.max_macs,
            support=S, w_cls=ec.w_cls, w_bce=ec.w_bce, w_macs=0.0 if costs is None else ec.w_macs,
            w_support=ec.w_support)
        loss = loss + lt["total"]
        terms.update({f"learned/{k}": v for k, v in lt.items() if k != "total"})
    return loss, MemberResult(loss.detach(), terms, final.detach() if teacher is None else None)


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def evaluate_subnet(model: nn.Module, space: SearchSpace, arch: Arch, calib: list[torch.Tensor], val_loader: Any,
                    cfg: Config, autocast: Any) -> dict[str, float]:
    """Accuracy of every exit and the final classifier after BN recalibration (ECE when learned)."""
    model.set_active(arch)
    with autocast():
        recalibrate_bn(model, calib, len(calib))
    model.eval()
    hits: list[torch.Tensor] = []
    confs: list[list[torch.Tensor]] = []
    corrects: list[list[torch.Tensor]] = []
    count = 0
    fmt = memory_format(cfg.train.channels_last, next(model.parameters()).device)
    for xb, yb in val_loader:
        with autocast():
            outs = model(xb.contiguous(memory_format=fmt))
        outs = [o.float() for o in outs if o is not None]
        right = [class_logits(o, cfg.exits.criterion if i < len(outs) - 1 else "softmax").argmax(-1) == yb
                 for i, o in enumerate(outs)]
        batch_hits = torch.stack([r.sum() for r in right])
        hits.append(batch_hits)
        count += len(yb)
        if cfg.exits.criterion == "learned":
            confs.append([exit_confidence(o, "learned") for o in outs[:-1]])
            corrects.append(right[:-1])
    acc = (torch.stack(hits).sum(0).float() / max(count, 1)).tolist()
    exit_ids = space.available_exits(arch)
    out = {f"exit_{k}": a for k, a in zip(exit_ids, acc[:-1])}
    out["final"] = acc[-1]
    if confs:
        for j, k in enumerate(exit_ids):
            out[f"exit_{k}_ece"] = expected_calibration_error(torch.cat([c[j] for c in confs]),
                                                              torch.cat([r[j] for r in corrects]))
    return out


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """BN running statistics and batch counts: the buffers a training-mode forward changes."""
    return {k: v for k, v in model.named_buffers() if k.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))}


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _bn_state(model).items()}


def validate(model: nn.Module, space: SearchSpace, subnets: dict[str, Arch], calib: list[torch.Tensor],
             val_loader: Any, cfg: Config, autocast: Any) -> dict[str, float]:
    """Score the fixed subnets without disturbing training: the shared BN statistics, the
    train/eval mode and every RNG stream are restored afterwards."""
    saved = bn_buffers(model)
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    metrics: dict[str, float] = {}
    with torch.random.fork_rng(devices=devices):
        for name, arch in subnets.items():
            for k, v in evaluate_subnet(model, space, arch, calib, val_loader, cfg, autocast).items():
                metrics[f"val/{name}/{k}"] = v
    with torch.no_grad():
        buffers = dict(model.named_buffers())
        for k, v in saved.items():
            buffers[k].copy_(v)
    model.train(was_training)
    return metrics


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loader: Any, step: int,
                     epoch: int, best: float, cfg: Config, space: SearchSpace, held_out_digest: str,
                     rng: dict | None = None, metrics: dict[str, Any] | None = None) -> dict:
    """Everything a resume needs, plus what the search checks: the space and the held-out images, and the last
    validation's ``metrics``."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(), "rng": rng if rng is not None else rng_state(), "step": step,
            "epoch": epoch, "best": best, "config": config_to_dict(cfg), "space_hash": space.space_hash(),
            "held_out_digest": held_out_digest, "metrics": dict(metrics or {})}


# What a resume must keep: these sections decide what the supernet learns, on which images, on what schedule (the
# restored optimizer and scheduler carry the first session's lr, decay and length, whatever a new config says).
RECIPE_SECTIONS = ("seed", "data", "space", "exits", "train")
# ...except these, free to change on resume: where the data is read from, the validation batch size (BN is in eval
# mode there, so the scores do not depend on it), and speed or logging knobs that leave the update rule alone
# (amp and channels_last follow the device, which may change too). train.bn_calib_batches is not here: it moves
# the validation scores, and so which epoch becomes best.pt.
RESUME_FREE_KEYS = ("data.root", "data.cache_dir", "data.download", "data.eval_batch_size", "train.resume",
                    "train.log_every", "train.compile", "train.amp", "train.channels_last")


def recipe_mismatch(saved: Any, cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, the checkpoint's value, the config's) for each recipe key on which they differ."""
    keys = [key for key, _, _ in describe() if key.split(".", 1)[0] in RECIPE_SECTIONS and key not in RESUME_FREE_KEYS]
    return saved_differences(saved, cfg, keys)


def load_checkpoint(path: Path, space: SearchSpace, kernel_transform: bool, cfg: Config | None = None) -> dict:
    """Read a checkpoint for resuming, refusing one trained on another search space or with
    another ``train.kernel_transform`` (its weights would not fit the model), and, given the
    ``cfg`` to resume with, one whose recipe differs (see ``RECIPE_SECTIONS``)."""
    if not path.is_file():
        raise RunError(f"cannot resume: no checkpoint at {path}; start without --resume, or check name= and out_dir=")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file raises many kinds of errors
        raise RunError(f"cannot read checkpoint {path}: {err}") from None
    theirs, ours = ckpt.get("space_hash"), space.space_hash()
    if theirs != ours:
        raise RunError(f"checkpoint {path} was trained on search space {theirs}, but this config's space is {ours}; "
                       "use a new run name (name=...) to train this space, or resume with the config the run "
                       f"was started with ({path.parent / 'config.yaml'})")
    if saved_kernel_transform(ckpt) != kernel_transform:
        raise RunError(f"cannot resume: {path} was trained with train.kernel_transform="
                       f"{str(saved_kernel_transform(ckpt)).lower()}; resume with that value, or start a new run "
                       "(name=...)")
    changed = recipe_mismatch(ckpt.get("config"), cfg) if cfg is not None else []
    if changed:
        diffs = ", ".join(f"{key}={json.dumps(a)} (this config: {json.dumps(b)})" for key, a, b in changed)
        raise RunError(f"cannot resume: {path} was trained with {diffs}, which a resume must keep (the restored "
                       "optimizer and schedule, and the validation split, follow the checkpoint); resume with the "
                       f"run's values (its {path.parent / 'config.yaml'}) or start a new run (name=...)")
    return ckpt


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop saves at the next step boundary and exits 130 / 143.
    A second signal interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.uninstall()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step "
              "(signal again to quit without saving)", file=sys.stderr, flush=True)

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------- training
def autocast_factory(device: torch.device, enabled: bool) -> Callable[[], Any]:
    if device.type == "cuda" and enabled:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _first_non_finite(values: list[float], names: list[str]) -> str | None:
    for name, v in zip(names, values):
        if not math.isfinite(v):
            return name
    return None


def non_finite_message(cfg: Config, step: int, epoch: int, subnet: str | None, arch: Arch | None) -> str:
    """Why the run stopped, and a fix that works: a --resume must keep train.lr, the warm-up and the clipping
    (the restored optimizer and schedule carry them) and so would replay this very step."""
    tc, run_dir = cfg.train, cfg.run_dir
    if subnet is not None:
        what = f"loss at step {step} (epoch {epoch + 1}) in subnet {subnet!r} ({arch})"
        fix, knobs = "a lower train.lr, a longer train.warmup_epochs or train.grad_clip", f"train.lr={tc.lr / 2:g}"
        if tc.grad_clip <= 0:
            knobs += " train.grad_clip=1.0"
    else:
        what = f"gradient norm at step {step} (epoch {epoch + 1}), every subnet's loss finite"
        fix = "a lower train.lr or a longer train.warmup_epochs (clipping cannot scale an inf down)"
        knobs = f"train.lr={tc.lr / 2:g} train.warmup_epochs={max(2 * tc.warmup_epochs, 1):g}"
    return (f"non-finite {what}; the last good state is saved in {run_dir / CHECKPOINT}, but a --resume keeps the "
            f"recipe and would fail here again. Start a new run with {fix}, e.g. "
            f"nachos supernet --config {run_dir / 'config.yaml'} name={cfg.name}-2 {knobs}")


def train_supernet(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train the supernet of ``cfg``; returns the final validation metrics (and ``exit_code``)."""
    ddp, device = setup_distributed(cfg)
    try:
        return _train(cfg, resume, ddp, device)
    finally:
        if ddp.active and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, resume: bool, ddp: Dist, device: torch.device) -> dict[str, Any]:
    tc = cfg.train
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = cfg.run_dir
    space = SearchSpace(cfg.space)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, space, tc.kernel_transform, cfg) if resume else None
    if ckpt is not None and ckpt["epoch"] >= tc.epochs and (run_dir / "metrics.json").is_file():
        if ddp.main:
            print(f"{run_dir} already finished its {tc.epochs} epochs: nothing to resume, nothing written",
                  file=sys.stderr)
        return {**json.loads((run_dir / "metrics.json").read_text()), "exit_code": 0}
    if ddp.main:
        ensure_dir(run_dir)

    fmt = memory_format(tc.channels_last, device)

    # data: each rank trains on its slice of every (shared-seed) batch
    splits = load_splits(cfg)
    if ckpt is not None:
        splits.check_held_out(ckpt.get("held_out_digest"), run_dir / CHECKPOINT,
                              "resuming would train on images it validated on and validate on images it trained on",
                              "Resume with the data it was trained on, or start a new run (name=...)")
    mean, std = splits.mean, splits.std
    loader = make_loader(cfg, splits.train_x, splits.train_y, device, train=True, seed=cfg.seed, mean=mean, std=std)
    val_loader = make_loader(cfg, splits.val_x, splits.val_y, device, train=False, seed=cfg.seed, mean=mean, std=std)
    calib = calibration_batches(cfg, splits.train_x, splits.train_y, mean, std, device,
                                 cfg.train.bn_calib_batches) if ddp.main else []
    calib = [xb.contiguous(memory_format=fmt) for xb in calib]
    learned = cfg.exits.criterion == "learned"
    support = SupportSet(cfg, splits.train_x, splits.train_y, mean, std, device) if learned else None

    # model, optimizer (no weight decay on BN and biases), per-iteration cosine schedule with warm-up
    model = create_supernet(cfg).to(device, memory_format=fmt)
    if ddp.active:  # identical start on every rank, whatever the local RNG did
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    forward = torch.compile(model) if tc.compile else model
    optimizer = create_optimizer_v2(model, opt=tc.optimizer, lr=tc.lr, weight_decay=tc.weight_decay,
                                    momentum=tc.momentum)  # timm's "sgd" is nesterov
    steps_per_epoch = len(loader)
    total_steps = max(1, tc.epochs * steps_per_epoch)
    scheduler = warmup_cosine(optimizer, tc.lr, total_steps, tc.warmup_epochs, steps_per_epoch)
    charge_macs = learned and cfg.exits.w_macs > 0
    table = shared_mac_table(cfg, ddp) if charge_macs or tc.random_max_macs > 0 else None
    costs = ExitCosts(space, table) if charge_macs else None
    accept = budget_filter(cfg, space, table)
    autocast = autocast_factory(device, tc.amp)
    params = [p for p in model.parameters() if p.requires_grad]
    # a failed step's forwards have already moved these; copied before each step (~0.1 ms) to save the last good state
    bn_live = list(_bn_state(model).values())
    bn_before = [t.clone() for t in bn_live]

    step, start_epoch, best, seconds_before = 0, 0, -1.0, 0.0
    metrics: dict[str, Any] = {}
    t_start = time.perf_counter()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        loader.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        step, start_epoch, best = ckpt["step"], ckpt["epoch"], ckpt["best"]
        seconds_before = ckpt.get("seconds", 0.0)  # wall time of earlier sessions, for the cost report
        metrics = ckpt.get("metrics", {})  # the last validation's, for metrics.json if no epoch is left to run
        if ddp.main:
            print(f"resuming {run_dir / CHECKPOINT}: epoch {start_epoch}, step {step}", file=sys.stderr)
    if ddp.main:  # only now: a refused resume must not overwrite the run's own config
        save_config(cfg, run_dir / "config.yaml")

    val_subnets = validation_subnets(space, cfg.seed, accept)
    tracker = Tracker(cfg, run_dir, "supernet", enabled=ddp.main, resume=resume)
    stop = StopRequest().install()
    arch_digest = hashlib.sha1()

    def save(path: Path, rng: dict | None = None, epoch: int | None = None) -> None:
        if ddp.main:
            state = checkpoint_state(model, optimizer, scheduler, loader, step, start_epoch if epoch is None else epoch,
                                     best, cfg, space, splits.held_out_digest, rng, metrics)
            state["seconds"] = seconds_before + time.perf_counter() - t_start
            atomic_torch_save(state, path)

    try:
        for epoch in range(start_epoch, tc.epochs):
            start_epoch = epoch  # what a mid-epoch checkpoint records
            model.train()
            if support is not None and epoch > 0:
                support.redraw(epoch)
            active_support = support if support is not None and epoch > 0 else None
            pos = loader.state_dict()["pos"] if loader.epoch > epoch else 0  # > 0 when resumed mid-epoch
            seen, t_log, stopping = 0, time.perf_counter(), False
            bar = tqdm(total=steps_per_epoch, initial=pos,
                       desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not ddp.main, leave=False, dynamic_ncols=True)
            batches = iter(loader)
            while True:
                # step boundary: every rank agrees on whether to stop (signals reach ranks at different times)
                rng_before, loader_before = rng_state(), loader.state_dict()
                try:
                    xb, yb = next(batches)
                except StopIteration:
                    break
                if ddp.active:
                    xb, yb = xb[ddp.rank::ddp.world], yb[ddp.rank::ddp.world]
                xb = xb.contiguous(memory_format=fmt)
                scheduler.step_update(step)
                members = sandwich(space, tc.n_random, cfg.seed, step, accept=accept)
                for _, arch in members:
                    arch_digest.update(arch.to_json().encode())

                optimizer.zero_grad(set_to_none=True)
                torch._foreach_copy_(bn_before, bn_live)
                results: list[MemberResult] = []
                teacher = None
                for name, arch in members:
                    model.set_active(arch)
                    loss, res = member_loss(forward, arch, xb, yb, teacher, cfg, costs, active_support,
                                            step, autocast, label_weight=tc.member_label_weight)
                    loss.backward()
                    if teacher is None:
                        teacher = res.final_logits
                    results.append(res)
                all_reduce_grads(params, ddp)
                # the norm even unclipped (inf): a finite loss can still backpropagate an inf, and one step
                # with it would write non-finite weights into the next checkpoint
                grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf)

                # one host sync per step: member losses (averaged over ranks), the gradient norm and the stop flag
                stop_flag = torch.tensor(float(stop.signum is not None), device=device)
                synced = all_reduce_mean(torch.stack([r.loss.float() for r in results]
                                                     + [grad_norm.float(), stop_flag]), ddp).tolist()
                member_values, norm_value, stop_signal = synced[:-2], synced[-2], synced[-1] > 0
                bad = _first_non_finite(member_values, [n for n, _ in members])
                if bad is not None or not math.isfinite(norm_value):
                    # params and optimizer are still the last good state (this step's update was not applied);
                    # BN statistics are put back to what they were before its forwards
                    with torch.no_grad():
                        torch._foreach_copy_(bn_live, bn_before)
                    loader.load_state_dict(loader_before)
                    save(run_dir / CHECKPOINT, rng=rng_before)
                    raise RunError(non_finite_message(cfg, step, epoch, bad, dict(members).get(bad or "")))
                optimizer.step()
                step += 1
                pos += 1
                seen += len(yb) * ddp.world
                bar.update()

                if ddp.main and (step % tc.log_every == 0 or step == 1):
                    elapsed = time.perf_counter() - t_log
                    log = {f"train/loss/{n}": v for (n, _), v in zip(members, member_values)}
                    log["train/loss"] = sum(member_values)
                    for key in {k for r in results for k in r.terms}:
                        vals = [r.terms[key] for r in results if key in r.terms]
                        log[f"train/{key}"] = float(torch.stack(vals).float().mean())
                    log["train/lr"] = optimizer.param_groups[0]["lr"]
                    log["train/grad_norm"] = norm_value
                    log["perf/images_per_s"] = seen / max(elapsed, 1e-9)
                    log["epoch"] = epoch + pos / steps_per_epoch
                    tracker.log(log, step=step)
                    bar.set_postfix(loss=f"{log['train/loss']:.3f}", lr=f"{log['train/lr']:.3g}",
                                    img_s=f"{log['perf/images_per_s']:.0f}")
                    seen, t_log = 0, time.perf_counter()

                if stop_signal:
                    stopping = True
                    break
            bar.close()
            if stopping and pos < steps_per_epoch:  # mid-epoch: the loader state says where to go on
                save(run_dir / CHECKPOINT)
            elif ddp.main:  # end of epoch: validate (rank 0; the others wait), checkpoint, log
                metrics = validate(model, space, val_subnets, calib, val_loader, cfg, autocast)
                largest_acc = metrics["val/largest/final"]
                is_best = largest_acc > best
                best = max(best, largest_acc)
                save(run_dir / CHECKPOINT, epoch=epoch + 1)
                if is_best:
                    save(run_dir / BEST, epoch=epoch + 1)
                tracker.log({**metrics, "epoch": epoch + 1}, step=step)
                print(f"epoch {epoch + 1}/{tc.epochs}: " + "  ".join(
                    f"{n} {metrics[f'val/{n}/final']:.4f}" for n in val_subnets), file=sys.stderr, flush=True)
            if ddp.active:
                dist.barrier()
            if stopping:
                code = SIGNAL_CODES.get(stop.signum or signal.SIGTERM, 130)
                if ddp.main:
                    print(f"stopped at step {step}; continue with --resume", file=sys.stderr)
                return {**metrics, "step": step, "epoch": epoch, "interrupted": True, "exit_code": code}

        # every rank must have drawn the same subnets and, through the averaged gradients, hold the same weights
        param_sum = float(sum(p.detach().double().sum() for p in params))
        digests, checksums = zip(*_gather((arch_digest.hexdigest(), param_sum), ddp))
        if ddp.main:
            if len(set(digests)) != 1 or len(set(checksums)) != 1:
                raise RunError(f"ranks disagree (subnet digests {digests}, weight checksums {checksums}); "
                               "this is a bug")
            final = {**metrics, "step": step, "epochs": tc.epochs, "best_largest": best,
                     "seconds": seconds_before + time.perf_counter() - t_start, "device": str(device),
                     "world_size": ddp.world,
                     "arch_digests": list(digests), "param_checksums": list(checksums),
                     "space_hash": space.space_hash()}
            atomic_write_text(run_dir / "metrics.json", json.dumps(final, indent=2))
            tracker.summary({k: v for k, v in final.items() if isinstance(v, (int, float))})
        return {**metrics, "step": step, "best_largest": best, "arch_digests": list(digests), "exit_code": 0}
    finally:
        stop.uninstall()
        tracker.finish()


def _gather(value: Any, ddp: Dist) -> list[Any]:
    if not ddp.active:
        return [value]
    out: list[Any] = [None] * ddp.world
    dist.all_gather_object(out, value)
    return out


# ----------------------------------------------------------------------------- entry points
def supernet_command(cfg: Config, args: argparse.Namespace) -> int:
    """``nachos supernet [--resume]``."""
    result = train_supernet(cfg, resume=bool(getattr(args, "resume", False)) or cfg.train.resume)
    return int(result.get("exit_code", 0))


def main(argv: list[str] | None = None) -> int:
    from nachos.cli import DEFAULT_CONFIG
    from nachos.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m supernet.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        return supernet_command(cfg, args)
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
