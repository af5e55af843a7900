"""pymoo operators on genome vectors: sampling, crossover, mutation and a repair that also
keeps the number of distinct backbones within budget.

Every backbone costs one BN recalibration and one forward pass over the validation split,
while exit sets and thresholds are free (scored from that backbone's cache). So the operators
change the arch rarely and the exits often, and once ``max_backbones`` distinct archs have been
admitted, ``BudgetRepair`` moves any offspring with a new arch onto the nearest admitted one
(fewest differing arch genes): the search then keeps refining exits and thresholds at no
network cost, and the run time stays bounded.

The problem handed to these operators must carry ``codec`` (a ``GenomeCodec``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from search.genome import GenomeCodec


@dataclass
class BackboneBudget:
    """Distinct archs admitted so far, in admission order (pickled with the algorithm state)."""

    limit: int  # 0 = unlimited
    genes: list[np.ndarray] = field(default_factory=list)
    index: dict[bytes, int] = field(default_factory=dict)
    fresh: list[bytes] = field(default_factory=list)  # admitted since the last ``settle``

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"fresh": [], **state})  # searches paused before ``fresh`` existed

    def admit(self, codec: GenomeCodec, x: np.ndarray, free: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
        """``x`` itself if its arch is admitted or can be; else ``x`` moved to the nearest admitted arch.
        Archs that ``free`` accepts (never run through the network) need no slot."""
        arch_genes = x[: codec.n_arch]
        key = arch_genes.tobytes()
        if key in self.index or (free is not None and free(x)):
            return x
        if not self.limit or len(self.genes) < self.limit:
            self.index[key] = len(self.genes)
            self.genes.append(arch_genes.copy())
            self.fresh.append(key)
            return x
        dist = codec.arch_distance(np.stack(self.genes), arch_genes)
        y = x.copy()
        y[: codec.n_arch] = self.genes[int(np.argmin(dist))]  # ties: the earliest admitted
        return codec.repair(y)

    def settle(self, codec: GenomeCodec, evaluated: np.ndarray) -> None:
        """Give back the slots of archs admitted since the last call that were not evaluated: pymoo
        repairs offspring before it drops duplicates and cuts the batch to the population size, so
        an admitted arch may never run (its slot, a network pass the budget allows, would be lost)."""
        ran = {np.asarray(x[: codec.n_arch], dtype=np.int64).tobytes() for x in evaluated}  # as codec.repair's
        lost = {k for k in self.fresh if k not in ran}
        if lost:
            self.genes = [g for g in self.genes if g.tobytes() not in lost]
            self.index = {g.tobytes(): i for i, g in enumerate(self.genes)}
        self.fresh = []


def repair_rows(codec: GenomeCodec, X: np.ndarray, budget: BackboneBudget | None,
                evaluator: Any = None) -> np.ndarray:
    out = np.stack([codec.repair(x) for x in X]) if len(X) else np.zeros((0, codec.n_var), dtype=np.int64)
    if budget is not None and len(out):
        free = None
        if evaluator is not None:
            def free(x: np.ndarray) -> bool:
                return evaluator.cost_infeasible(codec.decode_arch(x))
        out = np.stack([budget.admit(codec, x, free) for x in out])
    return out


class BudgetRepair(Repair):
    """Canonicalise every vector, then enforce the backbone budget kept in ``algorithm.data``."""

    def _do(self, problem, X, algorithm=None, **kwargs):
        budget = algorithm.data.get("backbone_budget") if algorithm is not None else None
        return repair_rows(problem.codec, np.asarray(X), budget, getattr(problem, "evaluator", None))


class GenomeSampling(Sampling):
    """Initial population over few backbones: the smallest and largest subnet as anchors, then
    random archs, each shared by several genomes with random exit sets and thresholds.

    With an evaluator attached to the problem (``problem.evaluator``), backbones must pass its
    ``init_ok`` (cheap, from costs alone): a constrained search then spends its first forward
    passes on archs that can be admissible, not on ones that cost ten times the budget."""

    def __init__(self, num_backbones: int, max_tries: int = 200) -> None:
        super().__init__()
        self.num_backbones = num_backbones
        self.max_tries = max_tries

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        codec: GenomeCodec = problem.codec
        rng = random_state
        evaluator = getattr(problem, "evaluator", None)
        ok = evaluator.init_ok if evaluator is not None else (lambda arch: True)
        n_arch = max(1, min(n_samples, self.num_backbones))
        anchors = [a for a in (codec.space.smallest(), codec.space.largest()) if ok(a)]
        archs = anchors[:n_arch] or [codec.space.smallest()]
        seen = {a.key() for a in archs}
        tries = 0
        while len(archs) < n_arch and tries < self.max_tries:
            a = codec.random_arch(rng)
            tries += 1
            if a.key() not in seen and ok(a):
                seen.add(a.key())
                archs.append(a)
        out, seen_x = [], set()
        for i in range(n_samples):
            for _ in range(20):  # few exit sets on a small arch: redraw duplicates a few times
                x = codec.encode(codec.random(rng, archs[i % len(archs)]))
                if x.tobytes() not in seen_x:
                    break
            seen_x.add(x.tobytes())
            out.append(x)
        return np.stack(out)


class GenomeCrossover(Crossover):
    """Uniform crossover over units: a stage's genes, the final width, an exit's (bit, threshold).

    With probability ``1 - arch_prob`` the children keep their parents' archs whole and only
    exits are recombined, which keeps most offspring on already-cached backbones."""

    def __init__(self, arch_prob: float, prob: float = 0.9) -> None:
        super().__init__(2, 2, prob=prob)
        self.arch_prob = arch_prob

    def _do(self, problem, X, random_state=None, **kwargs):
        codec: GenomeCodec = problem.codec
        rng = random_state
        _, n_matings, n_var = X.shape
        units = _units(codec)
        out = np.empty((2, n_matings, n_var), dtype=np.int64)
        for m in range(n_matings):
            a, b = X[0, m].astype(np.int64).copy(), X[1, m].astype(np.int64).copy()
            mix_arch = rng.random() < self.arch_prob
            for kind, idx in units:
                if (kind == "arch" and not mix_arch) or rng.random() >= 0.5:
                    continue
                a[idx], b[idx] = b[idx].copy(), a[idx].copy()
            out[0, m], out[1, m] = codec.repair(a), codec.repair(b)
        return out


def _units(codec: GenomeCodec) -> list[tuple[str, np.ndarray]]:
    units = [("arch", np.arange(s.start, s.stop)) for s in codec._stage_slices]
    units.append(("arch", np.array([codec.n_arch - 1])))
    for p in range(codec.num_positions):
        units.append(("exit", np.array([codec.exit_slice.start + p, codec.threshold_slice.start + p])))
    return units


class GenomeMutation(Mutation):
    """With probability ``arch_prob`` resample one arch gene (depth, width, a block's kernel or
    ratio, or the final width); flip each available exit with probability 1/P; move each
    selected threshold by +-1 step or (half the time) redraw it."""

    def __init__(self, arch_prob: float) -> None:
        super().__init__(prob=1.0)
        self.arch_prob = arch_prob

    def _do(self, problem, X, random_state=None, **kwargs):
        codec: GenomeCodec = problem.codec
        rng = random_state
        out = np.empty_like(X, dtype=np.int64)
        for r, x in enumerate(np.asarray(X, dtype=np.int64)):
            out[r] = self._mutate(codec, x.copy(), rng)
        return out

    def _mutate(self, codec: GenomeCodec, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.arch_prob:
            x = _mutate_arch(codec, x, rng)
        arch = codec.decode_arch(x)
        avail = codec.space.available_exits(arch)
        es, ts = codec.exit_slice.start, codec.threshold_slice.start
        G = codec.grid_steps
        flip_p = 1.0 / max(1, len(avail))
        for p in avail:
            if rng.random() < flip_p:
                x[es + p] = 1 - x[es + p]
                if x[es + p]:
                    x[ts + p] = rng.integers(0, G)
                continue
            if x[es + p] and rng.random() < 0.5:
                if rng.random() < 0.5:
                    x[ts + p] = rng.integers(0, G)
                else:
                    x[ts + p] = np.clip(x[ts + p] + rng.choice((-1, 1)), 0, G - 1)
        return codec.repair(x)


def _mutate_arch(codec: GenomeCodec, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resample one active arch gene; blocks a deeper stage adds get random kernel and ratio."""
    choices: list[int] = []
    for s, st in enumerate(codec.space.stages):
        sl = codec._stage_slices[s]
        depth = st.depths[x[sl.start + 1]]
        choices += [sl.start, sl.start + 1] + list(range(sl.start + 2, sl.start + 2 + 2 * depth))
    choices.append(codec.n_arch - 1)
    gene = int(rng.choice(choices))
    old = int(x[gene])
    if codec.xu[gene] > 0:
        new = int(rng.integers(0, codec.xu[gene]))  # any other value: skip the old one
        x[gene] = new + (new >= old)
    for s, st in enumerate(codec.space.stages):
        sl = codec._stage_slices[s]
        if gene == sl.start + 1:
            old_d, new_d = st.depths[old], st.depths[x[gene]]
            for b in range(old_d, new_d):
                x[sl.start + 2 + 2 * b] = rng.integers(0, len(st.kernels))
                x[sl.start + 3 + 2 * b] = rng.integers(0, len(st.expand_ratios))
    return x
