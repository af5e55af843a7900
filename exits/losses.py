"""Losses of the exit heads.

- :func:`exit_loss`: every exit learns from the labels (CE) and from the network's own final
  classifier (KL distillation, the final's logits detached so the exits never pull it down).
- NACHOS's learned-confidence terms (:func:`learned_exit_terms`), with the reference code's
  flaws fixed: the MACs regulariser stays differentiable (it was computed through ``.item()``),
  the support term compares per-sample vectors (it broadcast (n,) against (n, 1)), and the
  expected cost counts every head a sample passed through, not only the one it left at.

Every function returns a dict of named scalar terms (for logging) with the weighted sum under
``"total"``; a term whose weight is 0 is skipped entirely (no compute, no graph).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from exits.policies import class_logits, confidence_logit, exit_probabilities


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) at a temperature, scaled by T^2 so its gradient scale does not depend on T."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def exit_loss(exit_logits: Sequence[torch.Tensor], final_logits: torch.Tensor, target: torch.Tensor,
              w_ce: float | Sequence[float] = 1.0, w_distill: float = 1.0, temperature: float = 1.0,
              criterion: str = "softmax") -> dict[str, torch.Tensor]:
    """Sum over exits of w_ce * CE(exit, y) + w_distill * KL(final || exit).

    ``w_ce`` may be one weight or one per exit. With ``criterion='learned'`` the heads' extra
    confidence column is dropped here; the confidence is trained by :func:`learned_exit_terms`.
    Keys: ``exit_k/ce``, ``exit_k/distill``, ``exit_k/loss`` (unweighted parts, weighted sum) and
    ``total``.
    """
    weights = [float(w_ce)] * len(exit_logits) if isinstance(w_ce, (int, float)) else [float(w) for w in w_ce]
    if len(weights) != len(exit_logits):
        raise ValueError(f"{len(weights)} CE weights for {len(exit_logits)} exits")
    out: dict[str, torch.Tensor] = {}
    total = final_logits.new_zeros((), dtype=torch.float32)
    for k, (logits, w) in enumerate(zip(exit_logits, weights)):
        logits = class_logits(logits, criterion)
        loss = logits.new_zeros((), dtype=torch.float32)
        if w > 0:
            ce = F.cross_entropy(logits.float(), target)
            out[f"exit_{k}/ce"] = ce.detach()
            loss = loss + w * ce
        if w_distill > 0:
            kd = distill_kl(logits, final_logits, temperature)
            out[f"exit_{k}/distill"] = kd.detach()
            loss = loss + w_distill * kd
        out[f"exit_{k}/loss"] = loss.detach()
        total = total + loss
    out["total"] = total
    return out


# ----------------------------------------------------------------------------- NACHOS terms
def balanced_bce_weights(target: torch.Tensor) -> torch.Tensor:
    """Per-sample weights making positives and negatives weigh the same in total (N / (2 * n_class)).

    When one side is absent every sample gets weight 1 (there is nothing to balance).
    """
    target = target.float()
    n = target.numel()
    n_pos = target.sum()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.ones_like(target)
    return torch.where(target > 0.5, n / (2.0 * n_pos), n / (2.0 * n_neg))


def expected_macs(probs: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of sum_i p_i(x) * C_i: (E + 1, N) leave probabilities, (E + 1,) costs."""
    return (probs * costs.to(probs).unsqueeze(1)).sum(dim=0).mean()


def macs_regulariser(probs: torch.Tensor, costs: torch.Tensor, max_macs: float) -> torch.Tensor:
    """relu(M - M_max) / |C_final - M_max|, differentiable in the leave probabilities.

    ``costs[i]`` is the cumulative cost of leaving at exit i (backbone up to i plus every head up
    to and including i); ``costs[-1]`` is the whole network's (all heads included). Zero, with a
    zero gradient, whenever the expected cost is within budget.
    """
    m = expected_macs(probs, costs)
    scale = (costs[-1].float() - max_macs).abs().clamp_min(1.0)
    return F.relu(m - max_macs) / scale


def support_accuracy(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(E, N) bool "exit i right on sample n", (N,) labels -> S of shape (K, E): per-class accuracy.

    A class absent from the support samples gets the exit's overall accuracy.
    """
    correct = correct.float()
    onehot = F.one_hot(labels, num_classes).float()  # (N, K)
    hits = onehot.t() @ correct.t()  # (K, E)
    counts = onehot.sum(dim=0).unsqueeze(1)  # (K, 1)
    overall = correct.mean(dim=1).unsqueeze(0).expand_as(hits)
    return torch.where(counts > 0, hits / counts.clamp_min(1.0), overall)


def support_loss(conf: torch.Tensor, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """mean_n MSE(S[y_n, :], c(x_n)): each sample's confidence vector (E,) against its class's row."""
    per_sample = ((support[target].to(conf) - conf.t()) ** 2).mean(dim=1)  # (N,)
    return per_sample.mean()


def learned_exit_terms(exit_logits: Sequence[torch.Tensor], target: torch.Tensor, *,
                       final_logits: torch.Tensor | None = None, costs: torch.Tensor | None = None,
                       max_macs: float = 0.0, support: torch.Tensor | None = None,
                       w_cls: float = 1.0, w_bce: float = 1.0, w_macs: float = 1.0,
                       w_support: float = 1.0) -> dict[str, torch.Tensor]:
    """NACHOS's loss on learned confidences: w_cls L_cls + w_bce L_bce + w_macs L_mac + w_support L_support.

    ``exit_logits``: E heads' outputs (N, C + 1), the last column the confidence logit.
    ``final_logits``: the final classifier; when given, L_cls includes it with the remaining mass
    (its CE detached: here it only teaches the confidences when to hand over, the final classifier
    is trained by its own loss). ``costs``: (E + 1,) cumulative costs (needed when w_macs > 0).
    ``support``: (K, E) per-class exit accuracy S (the support term is skipped when None).
    """
    z = torch.stack([confidence_logit(l).float() for l in exit_logits])  # (E, N)
    conf = torch.sigmoid(z)
    probs = exit_probabilities(conf)  # (E + 1, N)
    logits = [class_logits(l, "learned").float() for l in exit_logits]
    out: dict[str, torch.Tensor] = {}
    total = z.new_zeros(())
    if w_cls > 0:
        ce = torch.stack([F.cross_entropy(l, target, reduction="none") for l in logits])  # (E, N)
        l_cls = (probs[:-1] * ce).mean(dim=1).sum()
        if final_logits is not None:
            ce_final = F.cross_entropy(final_logits.detach().float(), target, reduction="none")
            l_cls = l_cls + (probs[-1] * ce_final).mean()
        out["cls"] = l_cls.detach()
        total = total + w_cls * l_cls
    if w_bce > 0:
        l_bce = z.new_zeros(())
        for zi, li in zip(z, logits):
            right = (li.detach().argmax(dim=-1) == target).float()
            l_bce = l_bce + F.binary_cross_entropy_with_logits(zi, right, weight=balanced_bce_weights(right))
        out["bce"] = l_bce.detach()
        total = total + w_bce * l_bce
    if w_macs > 0:
        if costs is None:
            raise ValueError("w_macs > 0 needs the exits' cumulative costs")
        l_mac = macs_regulariser(probs, costs, max_macs)
        out["macs"] = l_mac.detach()
        out["expected_macs"] = expected_macs(probs.detach(), costs)
        total = total + w_macs * l_mac
    if w_support > 0 and support is not None:
        l_sup = support_loss(conf, target, support)
        out["support"] = l_sup.detach()
        total = total + w_support * l_sup
    out["total"] = total
    return out
