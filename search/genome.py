"""The searched object: backbone arch + exit set + one threshold per selected exit.

pymoo sees a fixed-length integer vector:
  [arch genes | P exit on/off bits | P threshold indices]
Arch genes are indices into the space's sorted choices, per stage: width, depth, then a
(kernel, expand ratio) pair for every block up to the stage's maximum depth; last the final
width. Every vector is kept canonical (genes of inactive blocks, bits of exits the arch lacks
and thresholds of unselected exits are 0), so that pymoo's duplicate elimination sees two
vectors of the same network as equal. Operators decode, change, then ``repair`` back.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from supernet.space import Arch, SearchSpace


@dataclass(frozen=True)
class Genome:
    arch: Arch
    exits: tuple[int, ...]  # candidate exit positions, increasing; () = no early exit
    thresholds: tuple[int, ...]  # grid index per selected exit

    def key(self) -> str:
        return f"{self.arch.key()}|{','.join(map(str, self.exits))}|{','.join(map(str, self.thresholds))}"

    def to_dict(self, grid: np.ndarray) -> dict:
        return {"arch": self.arch.to_dict(), "exits": list(self.exits), "threshold_idx": list(self.thresholds),
                "thresholds": [round(float(grid[t]), 6) for t in self.thresholds]}


class GenomeCodec:
    """Integer-vector encoding of genomes for one search space and threshold grid."""

    def __init__(self, space: SearchSpace, grid_steps: int) -> None:
        self.space = space
        self.grid_steps = grid_steps
        self.num_positions = len(space.exit_positions())
        upper: list[int] = []
        self._stage_slices: list[slice] = []
        for st in space.stages:
            start = len(upper)
            upper += [len(st.widths) - 1, len(st.depths) - 1]
            upper += [len(st.kernels) - 1, len(st.expand_ratios) - 1] * st.max_depth
            self._stage_slices.append(slice(start, len(upper)))
        upper.append(len(space.final_widths) - 1)
        self.n_arch = len(upper)
        P = self.num_positions
        upper += [1] * P + [grid_steps - 1] * P
        self.xu = np.array(upper, dtype=np.int64)
        self.xl = np.zeros_like(self.xu)
        self.n_var = len(upper)

    @property
    def exit_slice(self) -> slice:
        return slice(self.n_arch, self.n_arch + self.num_positions)

    @property
    def threshold_slice(self) -> slice:
        return slice(self.n_arch + self.num_positions, self.n_var)

    # ------------------------------------------------------------------ arch <-> genes
    def encode_arch(self, arch: Arch) -> np.ndarray:
        self.space.validate(arch)
        genes: list[int] = []
        for s, st in enumerate(self.space.stages):
            d = arch.depths[s]
            genes += [st.widths.index(arch.widths[s]), st.depths.index(d)]
            for b in range(st.max_depth):
                if b < d:
                    genes += [st.kernels.index(arch.kernels[s][b]), st.expand_ratios.index(arch.expand_ratios[s][b])]
                else:
                    genes += [0, 0]
        genes.append(self.space.final_widths.index(arch.final_width))
        return np.array(genes, dtype=np.int64)

    def decode_arch(self, genes: np.ndarray) -> Arch:
        g = np.clip(np.asarray(genes, dtype=np.int64)[: self.n_arch], 0, self.xu[: self.n_arch])
        depths, kernels, ratios, widths = [], [], [], []
        for s, st in enumerate(self.space.stages):
            sg = g[self._stage_slices[s]]
            d = st.depths[sg[1]]
            widths.append(st.widths[sg[0]])
            depths.append(d)
            pairs = sg[2:].reshape(st.max_depth, 2)
            kernels.append(tuple(st.kernels[pairs[b, 0]] if b < d else 0 for b in range(st.max_depth)))
            ratios.append(tuple(st.expand_ratios[pairs[b, 1]] if b < d else 0 for b in range(st.max_depth)))
        arch = Arch(tuple(depths), tuple(kernels), tuple(ratios), tuple(widths), self.space.final_widths[g[-1]])
        return self.space.validate(arch)

    # ------------------------------------------------------------------ genome <-> vector
    def encode(self, genome: Genome) -> np.ndarray:
        x = np.zeros(self.n_var, dtype=np.int64)
        x[: self.n_arch] = self.encode_arch(genome.arch)
        for e, t in zip(genome.exits, genome.thresholds):
            x[self.n_arch + e] = 1
            x[self.threshold_slice.start + e] = t
        return self.repair(x)

    def decode(self, x: np.ndarray) -> Genome:
        x = self.repair(x)
        arch = self.decode_arch(x)
        bits = x[self.exit_slice]
        exits = tuple(int(p) for p in np.flatnonzero(bits))
        thr = x[self.threshold_slice]
        return Genome(arch, exits, tuple(int(thr[e]) for e in exits))

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Clip to bounds and canonicalise (see the module docstring); returns a new vector."""
        x = np.clip(np.rint(np.asarray(x, dtype=np.float64)).astype(np.int64), self.xl, self.xu)
        arch = self.decode_arch(x)
        x[: self.n_arch] = self.encode_arch(arch)
        available = np.zeros(self.num_positions, dtype=bool)
        available[self.space.available_exits(arch)] = True
        bits = x[self.exit_slice].astype(bool) & available
        x[self.exit_slice] = bits
        thr = x[self.threshold_slice]
        thr[~bits] = 0
        x[self.threshold_slice] = thr
        return x

    def arch_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Differing arch genes between vector(s) ``a`` (n, V) or (V,) and ``b`` (V,)."""
        return np.sum(np.atleast_2d(a)[:, : self.n_arch] != np.asarray(b)[: self.n_arch], axis=1)

    # ------------------------------------------------------------------ random genomes
    def random_exits(self, arch: Arch, rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A uniformly random subset of the arch's exits (empty included) with random thresholds."""
        avail = self.space.available_exits(arch)
        exits = tuple(int(p) for p in avail if rng.random() < 0.5)
        return exits, tuple(int(t) for t in rng.integers(0, self.grid_steps, len(exits)))

    def random_arch(self, rng: np.random.Generator) -> Arch:
        return self.space.sample(random.Random(int(rng.integers(0, 2**62))))

    def random(self, rng: np.random.Generator, arch: Arch | None = None) -> Genome:
        arch = arch if arch is not None else self.random_arch(rng)
        exits, thr = self.random_exits(arch, rng)
        return Genome(arch, exits, thr)
