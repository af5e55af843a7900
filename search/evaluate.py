"""From genomes to scored, constraint-checked candidates, and the archive that keeps them.

A ``Backend`` supplies what the network and the cost table know about a backbone (its
prediction cache, the cumulative cost of leaving at each exit, parameters); everything else
(the exit decisions of any exit set and thresholds) comes from ``search.scoring`` in numpy.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nachos.config import SearchConfig
from search.genome import Genome, GenomeCodec
from search.scoring import BackboneCache, ExitSetScorer, refine_thresholds, threshold_grid
from supernet.space import Arch


class Backend(Protocol):
    # Optionally also ``scores_id: str``, a digest of what the scores depend on (the supernet's weights,
    # the validation split): a search resumed with another one is refused, not mixed with the old scores.
    def prediction_cache(self, arch: Arch) -> BackboneCache: ...

    def exit_macs(self, arch: Arch, exits: tuple[int, ...]) -> np.ndarray: ...  # (k+1,) cumulative MACs

    def exit_latency(self, arch: Arch, exits: tuple[int, ...]) -> np.ndarray | None: ...  # None: no table

    def params(self, arch: Arch, exits: tuple[int, ...]) -> int: ...


# ---------------------------------------------------------------------- constraints
# each cost constraint, the record field it limits and that field in words
COST_FIELDS = {"max_expected_macs": "expected_macs", "max_peak_macs": "peak_macs", "max_params": "params"}
COST_WORDS = {"max_expected_macs": "expected MACs", "max_peak_macs": "peak MACs", "max_params": "params"}


@dataclass(frozen=True)
class Constraints:
    """Inequality constraints g <= 0, each scaled to a relative violation so that pymoo's summed
    violation weighs them alike."""

    min_accuracy: float = 0.0
    max_expected_macs: float = 0.0
    max_peak_macs: float = 0.0
    max_params: float = 0.0

    @classmethod
    def from_config(cls, s: SearchConfig) -> Constraints:
        return cls(s.min_accuracy, s.max_expected_macs, s.max_peak_macs, s.max_params)

    @property
    def active(self) -> list[str]:
        return [n for n in ("min_accuracy", *COST_FIELDS) if getattr(self, n) > 0]

    def violations(self, rec: dict[str, Any]) -> dict[str, float]:
        """Per active constraint, g (<= 0 satisfied)."""
        out = {}
        if self.min_accuracy > 0:
            out["min_accuracy"] = (self.min_accuracy - rec["accuracy"]) / self.min_accuracy
        for name, field in COST_FIELDS.items():
            limit = getattr(self, name)
            if limit > 0:
                out[name] = (rec[field] - limit) / limit
        return out

    def satisfied(self, rec: dict[str, Any]) -> bool:
        """Checked on the raw values (not the scaled g), so that a reader can recompute it."""
        return ((self.min_accuracy <= 0 or rec["accuracy"] >= self.min_accuracy)
                and all(getattr(self, n) <= 0 or rec[f] <= getattr(self, n) for n, f in COST_FIELDS.items()))

    def describe(self) -> str:
        parts = []
        if self.min_accuracy > 0:
            parts.append(f"accuracy >= {self.min_accuracy:g}")
        parts += [f"{COST_WORDS[n]} <= {getattr(self, n) / 1e6:.3g} M" for n in COST_FIELDS if getattr(self, n) > 0]
        return ", ".join(parts) or "none"


# ---------------------------------------------------------------------- archive
class Archive:
    """Every distinct evaluated genome of one algorithm, in evaluation order."""

    def __init__(self, algorithm: str, records: list[dict[str, Any]] | None = None,
                 refined: list[str] | None = None) -> None:
        self.algorithm = algorithm
        self.records: list[dict[str, Any]] = []
        self._by_key: dict[str, dict[str, Any]] = {}
        self.refined: list[str] = list(refined or [])  # (backbone, exit set) pairs already refined
        self._refined = set(self.refined)
        for r in records or []:
            self.add(r)

    def mark_refined(self, pair: str) -> bool:
        """True the first time ``pair`` is seen."""
        if pair in self._refined:
            return False
        self._refined.add(pair)
        self.refined.append(pair)
        return True

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._by_key.get(key)

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        if rec["key"] in self._by_key:
            return self._by_key[rec["key"]]
        rec = dict(rec, id=len(self.records), algorithm=self.algorithm)
        self.records.append(rec)
        self._by_key[rec["key"]] = rec
        return rec


# ---------------------------------------------------------------------- evaluator
class CandidateEvaluator:
    """Scores genomes from backbone caches; memoises scorers per (backbone, exit set)."""

    def __init__(self, codec: GenomeCodec, backend: Backend, search: SearchConfig, criterion: str,
                 max_scorers: int = 128) -> None:
        self.codec = codec
        self.backend = backend
        self.search = search
        self.criterion = criterion
        self.grid = threshold_grid(search.threshold_min, search.threshold_max, search.threshold_steps)
        self.constraints = Constraints.from_config(search)
        self.latency = search.metric == "latency"
        self._scorers: OrderedDict[tuple[str, tuple[int, ...]], ExitSetScorer] = OrderedDict()
        self._max_scorers = max_scorers
        self._caches: dict[str, BackboneCache] = {}
        self._costs: dict[tuple[str, tuple[int, ...]], tuple[np.ndarray, np.ndarray | None, int]] = {}
        self._infeasible: dict[str, bool] = {}

    def cache(self, arch: Arch) -> BackboneCache:
        key = arch.key()
        if key not in self._caches:
            self._caches[key] = self.backend.prediction_cache(arch)
        return self._caches[key]

    def costs(self, arch: Arch, exits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None, int]:
        key = (arch.key(), exits)
        if key not in self._costs:
            lat = self.backend.exit_latency(arch, exits) if self.latency else None
            self._costs[key] = (np.asarray(self.backend.exit_macs(arch, exits), dtype=np.float64),
                                None if lat is None else np.asarray(lat, dtype=np.float64),
                                int(self.backend.params(arch, exits)))
        return self._costs[key]

    def full_macs(self, arch: Arch) -> float:
        """MACs of the whole backbone without early exits."""
        return float(self.costs(arch, ())[0][-1])

    def cost_infeasible(self, arch: Arch) -> bool:
        """True when no exit set and no thresholds can bring ``arch`` within the cost constraints.

        Lower bounds: expected MACs >= the cheapest single exit (every sample leaving there) or
        the whole backbone; peak MACs and params >= those of the backbone without exits."""
        key = arch.key()
        if key not in self._infeasible:
            c = self.constraints
            full = self.full_macs(arch)
            min_expected = min([full] + [float(self.costs(arch, (p,))[0][0])
                                         for p in self.codec.space.available_exits(arch)])
            self._infeasible[key] = bool(
                (c.max_expected_macs > 0 and min_expected > c.max_expected_macs)
                or (c.max_peak_macs > 0 and full > c.max_peak_macs)
                or (c.max_params > 0 and self.costs(arch, ())[2] > c.max_params))
        return self._infeasible[key]

    def init_ok(self, arch: Arch) -> bool:
        """Whether ``arch`` may seed the initial population (see ``search.init_max_macs_ratio``)."""
        if self.cost_infeasible(arch):
            return False
        ratio, budget = self.search.init_max_macs_ratio, self.search.max_expected_macs
        return ratio <= 0 or budget <= 0 or self.full_macs(arch) <= ratio * budget

    def scorer(self, arch: Arch, exits: tuple[int, ...]) -> ExitSetScorer:
        key = (arch.key(), exits)
        sc = self._scorers.get(key)
        if sc is None:
            macs = self.costs(arch, exits)[0]
            sc = ExitSetScorer(self.cache(arch), exits, self.grid, self.criterion, macs)
            self._scorers[key] = sc
            if len(self._scorers) > self._max_scorers:
                self._scorers.popitem(last=False)
        else:
            self._scorers.move_to_end(key)
        return sc

    def record(self, genome: Genome, source: str, generation: int) -> dict[str, Any]:
        """Score one genome into a candidate record (JSON-ready)."""
        return self.records([genome], source, generation)[0]

    def records(self, genomes: list[Genome], source: str, generation: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(genomes)
        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for i, g in enumerate(genomes):
            groups.setdefault((g.arch.key(), g.exits), []).append(i)
        for idx in groups.values():
            g0 = genomes[idx[0]]
            if self.cost_infeasible(g0.arch):
                for i in idx:
                    out[i] = self._unscored_record(genomes[i], source, generation)
                continue
            sc = self.scorer(g0.arch, g0.exits)
            j = np.array([genomes[i].thresholds for i in idx], dtype=np.int64).reshape(len(idx), sc.k)
            s = sc.score(j)
            macs, lat, params = self.costs(g0.arch, g0.exits)
            for r, i in enumerate(idx):
                out[i] = self._make_record(genomes[i], s.accuracy[r], s.counts[r], sc.n, macs, lat, params,
                                           source, generation)
        return out  # type: ignore[return-value]

    def _make_record(self, g: Genome, acc: float, counts: np.ndarray, n: int, macs: np.ndarray,
                     lat: np.ndarray | None, params: int, source: str, generation: int) -> dict[str, Any]:
        rates = counts / n
        rec: dict[str, Any] = {
            "key": g.key(), "generation": generation, "threshold_source": source, "scored": True,
            **g.to_dict(self.grid), "arch_key": g.arch.key(), "arch_str": str(g.arch),
            "accuracy": float(acc), "expected_macs": float(counts @ macs / n), "peak_macs": float(macs[-1]),
            "params": int(params), "exit_rates": [round(float(r), 6) for r in rates],
            "exit_counts": [int(c) for c in counts],
        }
        if lat is not None:
            rec["expected_latency"] = float(counts @ lat / n)
            rec["peak_latency"] = float(lat[-1])
        return self._finish(rec)

    def _unscored_record(self, g: Genome, source: str, generation: int) -> dict[str, Any]:
        """A backbone that cannot meet the cost constraints is never run: its accuracy counts as 0
        and its expected cost is the lower bound of every sample leaving at the first exit."""
        macs, lat, params = self.costs(g.arch, g.exits)
        rec: dict[str, Any] = {
            "key": g.key(), "generation": generation, "threshold_source": source, "scored": False,
            **g.to_dict(self.grid), "arch_key": g.arch.key(), "arch_str": str(g.arch),
            "accuracy": 0.0, "expected_macs": float(macs[0]), "peak_macs": float(macs[-1]),
            "params": int(params), "exit_rates": [], "exit_counts": [],
        }
        if lat is not None:
            rec["expected_latency"] = float(lat[0])
            rec["peak_latency"] = float(lat[-1])
        return self._finish(rec)

    def _finish(self, rec: dict[str, Any]) -> dict[str, Any]:
        rec["violations"] = {k: float(v) for k, v in self.constraints.violations(rec).items()}
        rec["feasible"] = self.constraints.satisfied(rec)
        return rec

    def objective(self, rec: dict[str, Any]) -> float:
        return rec["expected_latency"] if self.latency else rec["expected_macs"]

    def refine(self, arch: Arch, exits: tuple[int, ...], start: tuple[int, ...], generation: int) -> dict[str, Any]:
        """The best thresholds of this (backbone, exit set): the most accurate under the expected-MACs
        budget, or, with no budget but an accuracy floor, the cheapest above the floor (the most accurate
        would be the backbone without exits). Cheapest in expected MACs, as the budget counts them,
        also when ``search.metric=latency`` ranks the front by latency."""
        budget = self.search.max_expected_macs if self.search.max_expected_macs > 0 else math.inf
        floor = self.search.min_accuracy if budget == math.inf and self.search.min_accuracy > 0 else None
        sc = self.scorer(arch, exits)
        j, _, _ = refine_thresholds(sc, budget, start=np.array(start, dtype=np.int64), min_accuracy=floor)
        return self.record(Genome(arch, exits, tuple(int(t) for t in j)), "refined", generation)

    def evaluate(self, genomes: list[Genome], archive: Archive, generation: int,
                 source: str) -> list[dict[str, Any]]:
        """Records of ``genomes`` (archived ones reused; ``source``: how their thresholds were drawn, "sampled"
        or "evolved"), new ones archived; with refinement on, the refined thresholds of each new
        (backbone, exit set) are archived too."""
        fresh = [g for g in genomes if archive.get(g.key()) is None]
        uniq = list(OrderedDict((g.key(), g) for g in fresh).values())
        for rec in self.records(uniq, source, generation):
            archive.add(rec)
        if self.search.refine_thresholds:
            pairs = OrderedDict(((g.arch.key(), g.exits), g) for g in uniq
                                if g.exits and not self.cost_infeasible(g.arch))
            for (arch_key, exits), g in pairs.items():
                if archive.mark_refined(f"{arch_key}|{','.join(map(str, exits))}"):
                    # a refined genome that evolution already found keeps its first record
                    archive.add(self.refine(g.arch, exits, g.thresholds, generation))
        return [archive.get(g.key()) for g in genomes]  # type: ignore[misc]
