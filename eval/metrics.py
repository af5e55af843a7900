"""Metrics of an early-exit model's predictions: accuracy, exit statistics, cost, latency
(calibration: exits.metrics)."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def exit_statistics(exit_index: np.ndarray, pred: np.ndarray, labels: np.ndarray, num_exits: int) -> dict[str, Any]:
    """Counts, rates and accuracy of the samples leaving at each selected exit, then at the final one."""
    exit_index, pred, labels = (np.asarray(a) for a in (exit_index, pred, labels))
    n = len(labels)
    counts = np.bincount(exit_index, minlength=num_exits + 1)[: num_exits + 1]
    hits = np.bincount(exit_index, weights=(pred == labels).astype(np.float64), minlength=num_exits + 1)
    acc = [float(h / c) if c else None for h, c in zip(hits, counts)]
    return {"counts": [int(c) for c in counts], "rates": [float(c / n) if n else 0.0 for c in counts],
            "accuracy": acc}


def expected_cost(counts: Sequence[int] | np.ndarray, exit_costs: Sequence[float] | np.ndarray) -> float:
    """Mean cost per sample when ``counts[i]`` samples leave at exit i (cumulative costs)."""
    c = np.asarray(counts, dtype=np.float64)
    costs = np.asarray(exit_costs, dtype=np.float64)
    if c.shape != costs.shape:
        raise ValueError(f"{c.shape[0]} exit counts for {costs.shape[0]} exit costs")
    return float(c @ costs / c.sum()) if c.sum() else float("nan")


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    s = sorted(seconds)
    if not s:
        return {"median_ms": float("nan"), "p10_ms": float("nan"), "p90_ms": float("nan"), "mean_ms": float("nan"),
                "n": 0}
    q = np.quantile(np.asarray(s), [0.1, 0.9])
    return {"median_ms": 1e3 * statistics.median(s), "p10_ms": 1e3 * float(q[0]), "p90_ms": 1e3 * float(q[1]),
            "mean_ms": 1e3 * statistics.fmean(s), "n": len(s)}
