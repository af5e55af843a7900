"""Score (exit set, thresholds) configurations of one backbone from its prediction cache.

The network never runs here. Thresholds live on a fixed grid, so a sample's behaviour at a
selected exit is captured by one small integer: q = how many usable grid values its score
reaches (it leaves at threshold index j iff j < q). For an exit set of k exits, a histogram
over the joint (q_1..q_k) cells, cumulated along every axis, answers "how many samples (and
how many correct ones) leave at exit i" with two lookups per exit, whatever N is. That makes a
configuration cost O(k) gathers, and millions of them score per second in one numpy call.

Decisions follow ``exits.policies.first_exit_np`` bit for bit: scores and thresholds compared
in float32, score >= threshold leaves, a threshold >= 1 never leaves.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exits.policies import decide_exits_np, exit_scores_np

# Joint-histogram tables above this many cells per array fall back to grouped direct scoring.
MAX_TABLE_CELLS = 1 << 21
# Tables are exact and fast (O(k) lookups per configuration, against O(k U) with U <= N groups) but
# hold 4 (k+2) bytes a cell, and the evaluator keeps up to 128 scorers: at N = 5000 one k = 6 table
# (11**6 cells) would take ~54 MB. So one is built where refinement enumerates the whole grid
# (grid_size**k <= MAX_EXHAUSTIVE, about as many cells: speed counts there) or where it has at most
# this many cells per validation sample; other exit sets are scored a few configurations at a time.
TABLE_CELLS_PER_SAMPLE = 8
# Exhaustive threshold refinement up to this many grid points, coordinate descent beyond.
MAX_EXHAUSTIVE = 1 << 18
_CHUNK = 1 << 16


@dataclass
class BackboneCache:
    """One backbone's validation predictions at every candidate exit, then the final classifier."""

    key: str
    pred: np.ndarray  # (P+1, N) int16
    conf: np.ndarray  # (P+1, N) float32: raw confidence of the configured criterion
    labels: np.ndarray  # (N,)
    _correct: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_positions(self) -> int:
        return self.pred.shape[0] - 1

    @property
    def num_samples(self) -> int:
        return self.pred.shape[1]

    @property
    def correct(self) -> np.ndarray:
        if self._correct is None:
            self._correct = self.pred == self.labels[None, :].astype(self.pred.dtype)
        return self._correct


def threshold_grid(lo: float, hi: float, steps: int) -> np.ndarray:
    return np.linspace(lo, hi, steps)


@dataclass
class Scores:
    """Scores of B configurations of one (backbone, exit set)."""

    accuracy: np.ndarray  # (B,)
    counts: np.ndarray  # (B, k+1) samples leaving at each selected exit, then the final
    expected_cost: np.ndarray  # (B,)


class ExitSetScorer:
    """Scores threshold-index vectors (B, k) for one backbone and one exit set."""

    def __init__(self, cache: BackboneCache, exits: tuple[int, ...], grid: np.ndarray, criterion: str,
                 exit_costs: np.ndarray, max_cells: int = MAX_TABLE_CELLS) -> None:
        self.exits = tuple(int(e) for e in exits)
        if list(self.exits) != sorted(set(self.exits)):
            raise ValueError(f"exit set {exits} must be strictly increasing positions")
        self.k = len(self.exits)
        self.grid = np.asarray(grid)
        self.grid_size = len(grid)
        self.n = cache.num_samples
        self.exit_costs = np.asarray(exit_costs, dtype=np.float64)
        if self.exit_costs.shape != (self.k + 1,):
            raise ValueError(f"exit_costs has shape {self.exit_costs.shape}, expected ({self.k + 1},)")
        g32 = np.asarray(grid, dtype=np.float32)
        if np.any(np.diff(g32) < 0):
            raise ValueError("the threshold grid must be non-decreasing")
        self.levels = int(np.sum(g32 < 1.0))  # grid values >= 1 never let a sample leave
        correct = cache.correct
        self._correct = np.concatenate([correct[list(self.exits)], correct[-1:]], axis=0)  # (k+1, N)
        if self.k:
            scores = exit_scores_np(cache.conf[list(self.exits)], criterion)
            self._q = np.searchsorted(g32[: self.levels], scores, side="right").astype(np.int64)  # (k, N)
        else:
            self._q = np.zeros((0, self.n), dtype=np.int64)
        side = self.levels + 1
        cells = side ** self.k
        self.use_table = cells <= max_cells and (self.grid_size ** self.k <= MAX_EXHAUSTIVE
                                                 or cells <= TABLE_CELLS_PER_SAMPLE * self.n)
        if self.use_table:
            self._build_table(side)
        else:
            self._build_groups()

    # ------------------------------------------------------------------ tables
    def _build_table(self, side: int) -> None:
        k = self.k
        self._strides = np.array([side ** (k - 1 - i) for i in range(k)], dtype=np.int64)
        flat = (self._q * self._strides[:, None]).sum(axis=0) if k else np.zeros(self.n, dtype=np.int64)
        cells = side ** k
        # Row 0 counts samples; rows 1..k+1 count those correct at exit i / at the final classifier.
        tab = np.empty((k + 2, cells), dtype=np.int32)
        tab[0] = np.bincount(flat, minlength=cells)
        for i in range(k + 1):
            tab[i + 1] = np.bincount(flat[self._correct[i]], minlength=cells)
        tab = tab.reshape((k + 2,) + (side,) * k)
        for axis in range(1, k + 1):
            np.cumsum(tab, axis=axis, out=tab)
        self._tab = tab.reshape(k + 2, cells)
        # Index with every coordinate at "any q" (= levels) from exit i on.
        self._tail = np.array([self.levels * self._strides[i:].sum() for i in range(k)] + [0], dtype=np.int64)

    def _score_table(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k, L = self.k, self.levels
        B = j.shape[0]
        counts = np.empty((B, k + 1), dtype=np.int64)
        correct = np.zeros(B, dtype=np.int64)
        total, corr = self._tab[0], self._tab
        prefix = np.zeros(B, dtype=np.int64)
        for i in range(k):
            stride = self._strides[i]
            rest = self._tail[i + 1]
            hi = prefix + (L * stride + rest)
            jc = np.minimum(j[:, i], L) * stride
            lo = prefix + jc + rest
            counts[:, i] = total[hi] - total[lo]
            row = corr[i + 1]
            correct += row[hi] - row[lo]
            prefix += jc
        counts[:, k] = total[prefix]
        correct += corr[k + 1][prefix]
        return correct, counts

    # ------------------------------------------------------------------ grouped fallback
    def _build_groups(self) -> None:
        key = np.concatenate([self._q, self._correct.astype(np.int64)], axis=0).T
        uniq, weight = np.unique(key, axis=0, return_counts=True)
        self._gq = uniq[:, : self.k].T  # (k, U)
        self._gc = uniq[:, self.k:].T.astype(np.int64)  # (k+1, U)
        self._gw = weight.astype(np.int64)

    def _score_groups(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.k
        leave = self._gq[None, :, :] > j[:, :, None]  # (B, k, U)
        taken = np.where(leave.any(axis=1), leave.argmax(axis=1), k)  # (B, U)
        onehot = taken[:, None, :] == np.arange(k + 1)[None, :, None]  # (B, k+1, U)
        counts = (onehot * self._gw).sum(axis=2)
        correct = (onehot * (self._gc * self._gw)[None]).sum(axis=(1, 2))
        return correct, counts

    # ------------------------------------------------------------------ public
    def score(self, j: np.ndarray) -> Scores:
        """(B, k) threshold indices into the grid -> accuracy, exit counts and expected cost."""
        j = np.asarray(j, dtype=np.int64)
        if j.ndim == 1:
            j = j[None, :]
        if j.shape[1] != self.k:
            raise ValueError(f"threshold indices of shape {j.shape} for an exit set of {self.k} exits")
        if self.k == 0:
            B = j.shape[0]
            counts = np.full((B, 1), self.n, dtype=np.int64)
            correct = np.full(B, int(self._correct[0].sum()), dtype=np.int64)
        else:
            fn = self._score_table if self.use_table else self._score_groups
            # The grouped path materialises (B, k+1, U) masks: keep a chunk to ~16 M cells.
            step = _CHUNK if self.use_table else max(1, (1 << 24) // ((self.k + 1) * len(self._gw)))
            parts = [fn(j[s:s + step]) for s in range(0, j.shape[0], step)]
            correct = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
            counts = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, self.k + 1), dtype=np.int64)
        return Scores(accuracy=correct / self.n, counts=counts, expected_cost=counts @ self.exit_costs / self.n)

    def all_indices(self, chunk: int = _CHUNK):
        """Every threshold-index vector of the grid, in chunks (lexicographic order)."""
        it = itertools.product(range(self.grid_size), repeat=self.k)
        while True:
            block = list(itertools.islice(it, chunk))
            if not block:
                return
            yield np.array(block, dtype=np.int64).reshape(-1, self.k)


def score_direct(cache: BackboneCache, exits: tuple[int, ...], thresholds: np.ndarray, criterion: str,
                 exit_costs: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Reference scorer (one configuration, straight through ``decide_exits_np``): acc, counts, cost."""
    exits = tuple(exits)
    taken = decide_exits_np(cache.conf[list(exits)], np.asarray(thresholds, dtype=np.float64), criterion)
    rows = np.array(list(exits) + [cache.num_positions])[taken]
    acc = float(np.mean(cache.pred[rows, np.arange(cache.num_samples)] == cache.labels))
    counts = np.bincount(taken, minlength=len(exits) + 1)
    return acc, counts, float(counts @ np.asarray(exit_costs, dtype=np.float64) / cache.num_samples)


# ---------------------------------------------------------------------- refinement
def _rank(acc: np.ndarray | float, cost: np.ndarray | float, budget: float,
          min_accuracy: float | None) -> tuple[np.ndarray, ...]:
    """Sort keys, most significant first, smallest best. With a budget: feasible first, then highest
    accuracy, then lowest cost (infeasible: lowest cost, then highest accuracy). With ``min_accuracy``:
    accurate enough first, then lowest cost, then highest accuracy (not enough: the reverse)."""
    acc, cost = np.asarray(acc, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    ok = acc >= min_accuracy if min_accuracy is not None else cost <= budget
    first, second = (cost, -acc) if min_accuracy is not None else (-acc, cost)
    return ~ok, np.where(ok, first, second), np.where(ok, second, first)


def _better(acc: np.ndarray, cost: np.ndarray, budget: float, min_accuracy: float | None = None) -> int:
    """Index of the best configuration (see ``_rank``; ties: the first)."""
    return int(np.lexsort(_rank(acc, cost, budget, min_accuracy)[::-1])[0])


def refine_thresholds(scorer: ExitSetScorer, budget: float, start: np.ndarray | None = None,
                      max_exhaustive: int = MAX_EXHAUSTIVE, max_rounds: int = 20,
                      min_accuracy: float | None = None) -> tuple[np.ndarray, float, float]:
    """Threshold indices of highest accuracy with expected cost <= budget (inf = no budget), or,
    given ``min_accuracy``, of lowest expected cost with accuracy >= min_accuracy (budget unused).

    Small grids are searched exhaustively (exact); larger ones by coordinate descent over the
    grid from ``start`` and from the highest thresholds (no early exit when the grid reaches 1).
    With no feasible point, the cheapest wins (with ``min_accuracy``: the most accurate).
    Returns (indices (k,), accuracy, expected cost).
    """
    k, G = scorer.k, scorer.grid_size
    if k == 0:
        s = scorer.score(np.zeros((1, 0), dtype=np.int64))
        return np.zeros(0, dtype=np.int64), float(s.accuracy[0]), float(s.expected_cost[0])
    if G ** k <= max_exhaustive:
        best: tuple[np.ndarray, float, float] | None = None
        for block in scorer.all_indices():
            s = scorer.score(block)
            i = _better(s.accuracy, s.expected_cost, budget, min_accuracy)
            cand = (block[i], float(s.accuracy[i]), float(s.expected_cost[i]))
            if best is None or _prefer(cand, best, budget, min_accuracy):
                best = cand
        assert best is not None
        return best
    starts = [np.full(k, G - 1, dtype=np.int64)]
    if start is not None:
        starts.append(np.asarray(start, dtype=np.int64).copy())
    results = [_coordinate_descent(scorer, s0, budget, max_rounds, min_accuracy) for s0 in starts]
    best = results[0]
    for r in results[1:]:
        if _prefer(r, best, budget, min_accuracy):
            best = r
    return best


def _prefer(a: tuple[np.ndarray, float, float], b: tuple[np.ndarray, float, float], budget: float,
            min_accuracy: float | None = None) -> bool:
    """Whether (indices, accuracy, cost) ``a`` ranks strictly before ``b`` (see ``_rank``)."""
    ka, kb = (tuple(float(v) for v in _rank(x[1], x[2], budget, min_accuracy)) for x in (a, b))
    return ka < kb


def _coordinate_descent(scorer: ExitSetScorer, j: np.ndarray, budget: float, max_rounds: int,
                        min_accuracy: float | None = None) -> tuple[np.ndarray, float, float]:
    G = scorer.grid_size
    s = scorer.score(j[None])
    cur = (j.copy(), float(s.accuracy[0]), float(s.expected_cost[0]))
    for _ in range(max_rounds):
        improved = False
        for i in range(scorer.k):
            cand = np.repeat(cur[0][None], G, axis=0)
            cand[:, i] = np.arange(G)
            s = scorer.score(cand)
            b = _better(s.accuracy, s.expected_cost, budget, min_accuracy)
            new = (cand[b], float(s.accuracy[b]), float(s.expected_cost[b]))
            if _prefer(new, cur, budget, min_accuracy):
                cur, improved = new, True
        if not improved:
            break
    return cur


def cheapest_exit_configuration(cache: BackboneCache, positions: Sequence[int],
                                exit_costs: Callable[[tuple[int, ...]], np.ndarray], grid: np.ndarray,
                                criterion: str, min_accuracy: float, every_subset: bool = True) -> dict[str, Any]:
    """Exits and thresholds of one fixed backbone with the lowest expected cost at accuracy >=
    ``min_accuracy``, over every subset of ``positions`` (no exit included), or with exactly
    ``positions`` as exits when not ``every_subset``: early exits for a backbone chosen by hand
    rather than by the search. With none accurate enough, the most accurate configuration.
    Returns exits, threshold_idx, thresholds, accuracy, expected_cost, counts."""
    best: tuple[tuple[np.ndarray, float, float], tuple[int, ...], ExitSetScorer] | None = None
    sizes = range(len(positions) + 1) if every_subset else [len(positions)]
    for k in sizes:
        for exits in itertools.combinations(sorted(positions), k):
            scorer = ExitSetScorer(cache, exits, grid, criterion, np.asarray(exit_costs(exits), dtype=np.float64))
            found = refine_thresholds(scorer, math.inf, min_accuracy=min_accuracy)
            if best is None or _prefer(found, best[0], math.inf, min_accuracy):
                best = (found, exits, scorer)
    assert best is not None
    (idx, acc, cost), exits, scorer = best
    return {"exits": list(exits), "threshold_idx": [int(j) for j in idx], "thresholds": [float(grid[j]) for j in idx],
            "accuracy": acc, "expected_cost": cost, "counts": [int(c) for c in scorer.score(idx[None]).counts[0]]}
