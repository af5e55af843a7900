"""Calibration of exit confidences: one expected calibration error for training's validation and eval."""
from __future__ import annotations

import numpy as np
import torch


def _as_float64(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def calibration_bins(conf: np.ndarray | torch.Tensor, bins: int = 15) -> np.ndarray:
    """Bin index of each confidence in ``bins`` equal-width bins (lo, hi], the first one [0, hi]
    (Guo et al. 2017); values outside [0, 1] are clipped first.

    A confidence equal to an edge k / bins belongs to bin k - 1. Edges and comparisons are in float64
    (``ceil(conf * bins)`` misplaces some edge values: 0.07 * 100 = 7.000000000000001).
    """
    conf = np.clip(_as_float64(conf), 0.0, 1.0)
    edges = np.arange(1, bins, dtype=np.float64) / bins
    return np.searchsorted(edges, conf, side="left")


def expected_calibration_error(conf: np.ndarray | torch.Tensor, correct: np.ndarray | torch.Tensor,
                               bins: int = 15) -> float:
    """Equal-width-bin ECE, sum_b |B_b| / N * |mean conf(B_b) - accuracy(B_b)|, over ``calibration_bins``.
    NaN for no samples (undefined, not perfectly calibrated)."""
    conf, correct = np.clip(_as_float64(conf), 0.0, 1.0), _as_float64(correct)
    if conf.size != correct.size:
        raise ValueError(f"{conf.size} confidences for {correct.size} correctness flags")
    if conf.size == 0:
        return float("nan")
    which = calibration_bins(conf, bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    return float(np.abs(conf_sum - acc_sum).sum() / conf.size)  # per bin n_b * |mean conf - accuracy|; empty: 0
