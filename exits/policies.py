"""When does a sample leave? Exit confidences, scores and decisions, in torch and numpy.

Three criteria:
- ``softmax``: confidence = max softmax probability.
- ``entropy``: confidence = 1 - H(p) / log C (1 = one-hot, 0 = uniform).
- ``learned``: the head has one extra output, c = sigmoid(last logit). NACHOS's rule: with
  p_i = c_i * prod_{j<i} (1 - c_j) over the *selected* exits, a sample leaves at the first exit
  whose cumulative mass sum_{k<=i} p_k = 1 - prod_{k<=i} (1 - c_k) reaches the threshold.

Shapes: ``conf`` and ``scores`` are (E, N) for E selected exits in network order and N samples;
``thresholds`` are (E,) or batched (..., E) to score many threshold sets at once (search). A
decision is the index of the exit taken, E meaning the sample went on to the final classifier.
A threshold >= 1 disables its exit (a saturated confidence of exactly 1.0 does not leave),
so that search's ``threshold_max = 1`` reads as "never exit here".

The numpy twins (``*_np``) exist because search scores thousands of configurations from cached
confidences; they must match the torch versions (tests check this).
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Criterion = Literal["softmax", "entropy", "learned"]
CRITERIA: tuple[str, ...] = ("softmax", "entropy", "learned")


def _check(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown exit criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


# ----------------------------------------------------------------------------- torch
def class_logits(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """The class logits of a head's output: the learned criterion's confidence column dropped."""
    _check(criterion)
    return logits[..., :-1] if criterion == "learned" else logits


def confidence_logit(logits: torch.Tensor) -> torch.Tensor:
    """The learned criterion's raw confidence output (before the sigmoid), shape (N,)."""
    return logits[..., -1]


def exit_confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """(N, C[+1]) head output -> (N,) confidence in [0, 1]."""
    _check(criterion)
    if criterion == "learned":
        return torch.sigmoid(confidence_logit(logits).float())
    logp = F.log_softmax(logits.float(), dim=-1)
    if criterion == "softmax":
        return logp.max(dim=-1).values.exp()
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return 1.0 - entropy / math.log(logits.shape[-1])


def exit_probabilities(conf: torch.Tensor) -> torch.Tensor:
    """Learned criterion: (E, N) confidences -> (E + 1, N) probability of leaving at each exit.

    p_i = c_i * prod_{j<i} (1 - c_j); the last row is the final classifier's share, the mass left
    after every exit: prod_j (1 - c_j). Columns sum to 1. Differentiable (used by the losses).
    """
    if conf.shape[0] == 0:  # no exit: everything reaches the final classifier
        return torch.ones(1, conf.shape[1], dtype=conf.dtype, device=conf.device)
    survive = torch.cumprod(1.0 - conf, dim=0)  # prod_{j<=i} (1 - c_j)
    before = torch.cat([torch.ones_like(conf[:1]), survive[:-1]], dim=0)  # prod_{j<i}
    return torch.cat([conf * before, survive[-1:]], dim=0)


def exit_scores(conf: torch.Tensor, criterion: str) -> torch.Tensor:
    """(E, N) confidences -> (E, N) scores compared with the thresholds (cumulative when learned)."""
    _check(criterion)
    if criterion == "learned":
        # exit by exit in conf's dtype, as the numpy twin, the runtime and ONNX multiply: torch's CPU cumprod
        # accumulates float32 in double, and a sample near a threshold would leave elsewhere in search and eval
        survive = list(1.0 - conf)
        for i in range(1, len(survive)):
            survive[i] = survive[i - 1] * survive[i]
        return 1.0 - torch.stack(survive) if survive else conf.clone()
    return conf


def first_exit(scores: torch.Tensor, thresholds: torch.Tensor | list[float]) -> torch.Tensor:
    """(E, N) scores, (..., E) thresholds -> (..., N) index of the first exit taken (E = final)."""
    thresholds = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
    E = scores.shape[0]
    if thresholds.shape[-1] != E:
        raise ValueError(f"{thresholds.shape[-1]} thresholds for {E} exits")
    if E == 0:  # no exit selected: everything reaches the final classifier
        return torch.zeros(thresholds.shape[:-1] + scores.shape[1:], dtype=torch.long, device=scores.device)
    t = thresholds.unsqueeze(-1)  # (..., E, 1)
    leave = (scores >= t) & (t < 1.0)  # (..., E, N)
    taken = leave.to(torch.uint8).argmax(dim=-2)  # first True (0 when none)
    return torch.where(leave.any(dim=-2), taken, torch.full_like(taken, E))


def decide_exits(conf: torch.Tensor, thresholds: torch.Tensor | list[float], criterion: str) -> torch.Tensor:
    """(E, N) confidences of the selected exits, (..., E) thresholds -> (..., N) exit index taken."""
    return first_exit(exit_scores(conf, criterion), thresholds)


# ----------------------------------------------------------------------------- numpy
def class_logits_np(logits: np.ndarray, criterion: str) -> np.ndarray:
    _check(criterion)
    return logits[..., :-1] if criterion == "learned" else logits


def _log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def exit_confidence_np(logits: np.ndarray, criterion: str) -> np.ndarray:
    """Numpy twin of :func:`exit_confidence` (float32 result)."""
    _check(criterion)
    if criterion == "learned":
        z = logits[..., -1].astype(np.float64)
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # overflow-free sigmoid
    logp = _log_softmax_np(logits)
    if criterion == "softmax":
        return np.exp(logp.max(axis=-1)).astype(np.float32)
    entropy = -(np.exp(logp) * logp).sum(axis=-1)
    return (1.0 - entropy / math.log(logits.shape[-1])).astype(np.float32)


def exit_scores_np(conf: np.ndarray, criterion: str) -> np.ndarray:
    _check(criterion)
    if criterion == "learned":
        return 1.0 - np.cumprod(1.0 - conf, axis=0)
    return conf


def first_exit_np(scores: np.ndarray, thresholds: np.ndarray | list[float]) -> np.ndarray:
    """Numpy twin of :func:`first_exit`: (E, N) scores, (..., E) thresholds -> (..., N) int64."""
    thresholds = np.asarray(thresholds, dtype=scores.dtype)
    E = scores.shape[0]
    if thresholds.shape[-1] != E:
        raise ValueError(f"{thresholds.shape[-1]} thresholds for {E} exits")
    if E == 0:
        return np.zeros(thresholds.shape[:-1] + scores.shape[1:], dtype=np.int64)
    t = thresholds[..., None]
    leave = (scores >= t) & (t < 1.0)
    return np.where(leave.any(axis=-2), leave.argmax(axis=-2), E).astype(np.int64)


def decide_exits_np(conf: np.ndarray, thresholds: np.ndarray | list[float], criterion: str) -> np.ndarray:
    return first_exit_np(exit_scores_np(conf, criterion), thresholds)
