"""Search: cached scoring vs the reference decisions, genome operators, constraints, front,
resume, infeasible runs, and (end to end on configs/tiny.yaml) cache vs the extracted network."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nachos.config import Config, ConfigError, load_config
from nachos.runtime import RunError
from search.evaluate import Constraints
from search.front import pareto_front
from search.genome import Genome, GenomeCodec
from search.operators import BackboneBudget, GenomeCrossover, GenomeMutation, GenomeSampling, repair_rows
from search.run import INFEASIBLE_EXIT, Runner, run_search
from search.scoring import BackboneCache, ExitSetScorer, refine_thresholds, score_direct, threshold_grid
from supernet.space import Arch, SearchSpace

TINY = "configs/tiny.yaml"


class FakeBackend:
    """Synthetic prediction caches and costs: bigger archs and later exits are more accurate and
    cost more; a correct prediction tends to be more confident. No network, no data."""

    def __init__(self, space: SearchSpace, n: int = 400, num_classes: int = 10) -> None:
        self.space, self.n, self.C = space, n, num_classes
        self.P = len(space.exit_positions())
        self.labels = np.random.default_rng(0).integers(0, num_classes, n)
        self.computed: list[str] = []

    def _size(self, arch: Arch) -> float:
        total = float(arch.final_width)
        for s in range(len(self.space.stages)):
            for b in range(arch.depths[s]):
                total += arch.widths[s] * arch.kernels[s][b] * arch.expand_ratios[s][b]
        return total

    def backbone(self, arch: Arch) -> np.ndarray:
        size = self._size(arch) * 200
        return np.append(np.linspace(0.3, 0.9, self.P) * size, size)

    def prediction_cache(self, arch: Arch) -> BackboneCache:
        self.computed.append(arch.key())
        rng = np.random.default_rng(int(hashlib.sha1(arch.key().encode()).hexdigest()[:8], 16))
        quality = 0.6 + 0.4 * (1 - np.exp(-self._size(arch) / 3000))
        accs = np.append(np.linspace(0.35, 0.75, self.P), 0.9) * quality
        pred = np.empty((self.P + 1, self.n), np.int16)
        conf = np.empty((self.P + 1, self.n), np.float32)
        for p in range(self.P + 1):
            ok = rng.random(self.n) < accs[p]
            pred[p] = np.where(ok, self.labels, (self.labels + rng.integers(1, self.C, self.n)) % self.C)
            conf[p] = np.where(ok, rng.beta(5, 2, self.n), rng.beta(2, 3, self.n))
        return BackboneCache(arch.key(), pred, conf, self.labels.copy())

    def exit_macs(self, arch: Arch, exits: tuple[int, ...]) -> np.ndarray:
        bb, ids = self.backbone(arch), list(exits)
        heads = np.cumsum(np.full(len(ids), 2e4))
        return np.append(bb[ids] + heads, bb[-1] + (heads[-1] if ids else 0.0))

    def exit_latency(self, arch: Arch, exits: tuple[int, ...]) -> None:
        return None

    def params(self, arch: Arch, exits: tuple[int, ...]) -> int:
        return int(self._size(arch) * 10 + 1000 * len(exits))


def dominates(a: dict, b: dict, cost_key: str) -> bool:
    """The front's definition, written out as the oracle for ``pareto_front``."""
    return (a["accuracy"] >= b["accuracy"] and a[cost_key] <= b[cost_key]
            and (a["accuracy"] > b["accuracy"] or a[cost_key] < b[cost_key]))


def genome_from_record(record: dict) -> Genome:
    return Genome(Arch.from_dict(record["arch"]), tuple(record["exits"]), tuple(record["threshold_idx"]))


def fake_cfg(out: Path, *extra: str) -> Config:
    return load_config(TINY, [f"out_dir={out}", "wandb.mode=disabled", "search.max_backbones=10",
                              "search.generations=4", *extra], device_type="cpu")


def fake_search(cfg: Config, resume: bool = False):
    return run_search(cfg, resume, backend=FakeBackend(SearchSpace.from_config(cfg.space)), track=False)


# ----------------------------------------------------------------------------- scoring
def _random_cache(P: int, N: int, seed: int) -> BackboneCache:
    rng = np.random.default_rng(seed)
    conf = rng.random((P + 1, N)).astype(np.float32)
    grid = threshold_grid(0.0, 1.0, 11).astype(np.float32)
    conf[:, : N // 10] = rng.choice(grid, (P + 1, N // 10))  # ties exactly on grid values
    conf[:, N // 10: N // 5] = 1.0  # saturated confidences (a threshold of 1 must still not exit)
    labels = rng.integers(0, 10, N)
    pred = np.where(rng.random((P + 1, N)) < 0.6, labels, rng.integers(0, 10, (P + 1, N))).astype(np.int16)
    return BackboneCache("x", pred, conf, labels)


@pytest.mark.parametrize("criterion", ["softmax", "entropy", "learned"])
@pytest.mark.parametrize("max_cells", [1 << 21, 1])  # joint-histogram tables, grouped fallback
def test_cached_scores_match_decide_exits(criterion: str, max_cells: int) -> None:
    cache = _random_cache(P=4, N=600, seed=1)
    grid = threshold_grid(0.0, 1.0, 11)
    rng = np.random.default_rng(2)
    for exits in [(), (2,), (0, 3), (0, 1, 2, 3)]:
        costs = np.sort(rng.random(len(exits) + 1)) * 1e6
        sc = ExitSetScorer(cache, exits, grid, criterion, costs, max_cells=max_cells)
        J = rng.integers(0, len(grid), (60, len(exits)))
        s = sc.score(J)
        for b in range(len(J)):
            acc, counts, cost = score_direct(cache, exits, grid[J[b]], criterion, costs)
            assert s.accuracy[b] == pytest.approx(acc, abs=1e-12)
            np.testing.assert_array_equal(s.counts[b], counts)
            assert s.expected_cost[b] == pytest.approx(cost, rel=1e-12)


def test_exit_set_tables_are_kept_small() -> None:
    cache = _random_cache(P=6, N=200, seed=6)
    grid = threshold_grid(0.0, 1.0, 11)  # 10 usable levels: 11**k cells
    rng = np.random.default_rng(7)
    # a table for small sets and for those refined exhaustively (11**5 points), grouped scoring beyond
    for exits, table in [((0, 3), True), ((0, 1, 2, 4, 5), True), (tuple(range(6)), False)]:
        costs = np.sort(rng.random(len(exits) + 1)) * 1e6
        sc = ExitSetScorer(cache, exits, grid, "softmax", costs)
        assert sc.use_table == table
        J = rng.integers(0, len(grid), (40, len(exits)))
        s = sc.score(J)
        for b in range(len(J)):
            acc, counts, cost = score_direct(cache, exits, grid[J[b]], "softmax", costs)
            assert s.accuracy[b] == pytest.approx(acc, abs=1e-12)
            np.testing.assert_array_equal(s.counts[b], counts)
            assert s.expected_cost[b] == pytest.approx(cost, rel=1e-12)


@pytest.mark.parametrize("budget, min_accuracy", [(0.5, None), (2.0, None), (np.inf, None),
                                                  (np.inf, 0.65), (np.inf, 0.9)])
def test_threshold_preferences_agree(budget: float, min_accuracy: float | None) -> None:
    from search.scoring import _better, _prefer

    rng = np.random.default_rng(8)  # few distinct values: ties in cost and in accuracy
    acc, cost = rng.choice([0.5, 0.6, 0.7], 40), rng.choice([1.0, 2.0, 3.0], 40)
    best = _better(acc, cost, budget, min_accuracy)

    def cand(i: int) -> tuple[np.ndarray, float, float]:
        return np.zeros(0, dtype=np.int64), float(acc[i]), float(cost[i])

    for i in range(len(acc)):
        assert not _prefer(cand(i), cand(best), budget, min_accuracy)
        if (acc[i], cost[i]) != (acc[best], cost[best]):
            assert _prefer(cand(best), cand(i), budget, min_accuracy), (acc[i], cost[i])


def _assert_local_optimum(sc: ExitSetScorer, found: tuple[np.ndarray, float, float], budget: float,
                          min_accuracy: float | None = None) -> None:
    """Coordinate descent's promise: its figures are its indices', and no one-threshold move is preferred."""
    from search.scoring import _prefer

    j, acc, cost = found
    s = sc.score(j[None])
    assert (acc, cost) == pytest.approx((s.accuracy[0], s.expected_cost[0]))
    for i in range(len(j)):
        moves = np.repeat(j[None], sc.grid_size, axis=0)
        moves[:, i] = np.arange(sc.grid_size)
        s = sc.score(moves)
        for r in range(sc.grid_size):
            assert not _prefer((moves[r], s.accuracy[r], s.expected_cost[r]), found, budget, min_accuracy)


def test_refinement_is_optimal_and_feasible() -> None:
    cache = _random_cache(P=3, N=500, seed=3)
    grid = threshold_grid(0.5, 1.0, 6)
    costs = np.array([1.0, 2.0, 3.0, 4.0]) * 1e6
    sc = ExitSetScorer(cache, (0, 1, 2), grid, "softmax", costs)
    budget = 3.0e6
    j, acc, cost = refine_thresholds(sc, budget)
    everything = np.array(np.meshgrid(*[range(6)] * 3, indexing="ij")).reshape(3, -1).T
    s = sc.score(everything)
    feasible = s.expected_cost <= budget
    assert cost <= budget and acc == pytest.approx(s.accuracy[feasible].max())
    j2, acc2, cost2 = refine_thresholds(sc, budget, max_exhaustive=1)  # coordinate descent
    assert cost2 <= budget and acc2 <= acc + 1e-12
    _assert_local_optimum(sc, (j2, acc2, cost2), budget)



def test_cheapest_thresholds_at_an_accuracy_floor() -> None:
    cache = _random_cache(P=3, N=500, seed=4)
    grid = threshold_grid(0.5, 1.0, 6)
    costs = np.array([1.0, 2.0, 3.0, 4.0]) * 1e6
    sc = ExitSetScorer(cache, (0, 1, 2), grid, "softmax", costs)
    everything = np.array(np.meshgrid(*[range(6)] * 3, indexing="ij")).reshape(3, -1).T
    s = sc.score(everything)
    floor = float(np.quantile(s.accuracy, 0.7))  # reachable, but not by the cheapest configurations
    j, acc, cost = refine_thresholds(sc, np.inf, min_accuracy=floor)
    ok = s.accuracy >= floor
    assert acc >= floor and cost == pytest.approx(s.expected_cost[ok].min())
    assert cost > s.expected_cost.min()  # the floor binds
    j2, acc2, cost2 = refine_thresholds(sc, np.inf, max_exhaustive=1, min_accuracy=floor)  # coordinate descent
    assert acc2 >= floor and cost2 >= cost - 1e-6
    _assert_local_optimum(sc, (j2, acc2, cost2), np.inf, floor)
    # out of reach: the most accurate configuration
    _, acc3, _ = refine_thresholds(sc, np.inf, min_accuracy=1.1)
    assert acc3 == pytest.approx(s.accuracy.max())


def test_cheapest_exit_configuration_searches_every_exit_subset() -> None:
    from search.scoring import cheapest_exit_configuration

    cache = _random_cache(P=3, N=400, seed=5)
    grid = threshold_grid(0.5, 1.0, 6)
    backbone = np.array([1.0, 2.0, 3.0, 4.0]) * 1e6  # to each position, then to the end
    head = 0.2e6

    def exit_costs(exits: tuple[int, ...]) -> np.ndarray:
        early = [backbone[e] + head * (i + 1) for i, e in enumerate(exits)]
        return np.array(early + [backbone[-1] + head * len(exits)])

    floor = float(cache.correct[-1].mean()) - 0.01
    best = cheapest_exit_configuration(cache, [0, 1, 2], exit_costs, grid, "softmax", floor)
    acc, counts, cost = score_direct(cache, tuple(best["exits"]), np.asarray(best["thresholds"]), "softmax",
                                     exit_costs(tuple(best["exits"])))
    assert acc == pytest.approx(best["accuracy"]) and cost == pytest.approx(best["expected_cost"])
    assert acc >= floor and list(counts) == best["counts"]
    for k in range(4):  # brute force over every subset and every grid point
        for exits in itertools.combinations(range(3), k):
            sc = ExitSetScorer(cache, exits, grid, "softmax", exit_costs(exits))
            J = np.array(list(itertools.product(range(6), repeat=k)), dtype=np.int64).reshape(6 ** k, k)
            s = sc.score(J)
            ok = s.accuracy >= floor
            assert not ok.any() or s.expected_cost[ok].min() >= best["expected_cost"] - 1e-6
    # exactly the exits given: the same brute force over that one set's thresholds
    fixed = cheapest_exit_configuration(cache, [0, 2], exit_costs, grid, "softmax", floor, every_subset=False)
    assert fixed["exits"] == [0, 2]
    s = ExitSetScorer(cache, (0, 2), grid, "softmax", exit_costs((0, 2))).score(
        np.array(list(itertools.product(range(6), repeat=2)), dtype=np.int64))
    ok = s.accuracy >= floor
    assert fixed["expected_cost"] == pytest.approx(s.expected_cost[ok].min() if ok.any() else
                                                   s.expected_cost[s.accuracy.argmax()])


# ----------------------------------------------------------------------------- genome
@pytest.mark.parametrize("exit_mode", ["stage", "block"])
def test_genome_operators_produce_valid_genomes(exit_mode: str) -> None:
    cfg = load_config("configs/cifar10.yaml", [f"space.exit_positions={exit_mode}"], device_type="cpu")
    space = SearchSpace.from_config(cfg.space)
    codec = GenomeCodec(space, 11)

    class Problem:  # what the operators read from a pymoo problem
        n_var = codec.n_var

    problem = Problem()
    problem.codec = codec
    rng = np.random.default_rng(0)
    X = GenomeSampling(4)._do(problem, 24, random_state=rng)
    for _ in range(5):
        parents = X[rng.integers(0, len(X), (2, 12))]
        Y = GenomeCrossover(0.5)._do(problem, parents, random_state=rng).reshape(-1, codec.n_var)
        X = GenomeMutation(0.5)._do(problem, Y, random_state=rng)
        for x in X:
            np.testing.assert_array_equal(codec.repair(x), x)  # canonical
            g = codec.decode(x)
            space.validate(g.arch)
            assert set(g.exits) <= set(space.available_exits(g.arch)) and list(g.exits) == sorted(g.exits)
            assert len(g.thresholds) == len(g.exits) and all(0 <= t < 11 for t in g.thresholds)
            np.testing.assert_array_equal(codec.encode(g), x)
    # noise in, valid genomes out
    for x in rng.integers(-3, 12, (50, codec.n_var)):
        g = codec.decode(x)
        space.validate(g.arch)
        assert set(g.exits) <= set(space.available_exits(g.arch))
    # the backbone budget moves new archs onto admitted ones once it is full
    budget = BackboneBudget(limit=3)
    out = repair_rows(codec, X, budget)
    assert len({codec.decode(x).arch for x in out}) <= 3


def test_the_backbone_budget_gives_back_the_slots_of_archs_never_evaluated(tmp_path: Path) -> None:
    space = SearchSpace.from_config(load_config("configs/cifar10.yaml", [], device_type="cpu").space)
    codec, rng = GenomeCodec(space, 11), np.random.default_rng(0)
    a, b, c = (codec.encode(codec.random(rng, space.sample(random.Random(i)))) for i in range(3))
    budget = BackboneBudget(limit=2)
    assert all(np.array_equal(budget.admit(codec, x), x) for x in (a, b))
    budget.settle(codec, np.stack([a]).astype(np.float64))  # pymoo dropped b after the repair admitted it
    assert np.array_equal(budget.admit(codec, c), c)  # b's slot went to c
    budget.settle(codec, np.stack([a, c]))
    moved = budget.admit(codec, b)  # full again: b moves onto an admitted arch
    assert codec.decode_arch(moved).key() in {codec.decode_arch(x).key() for x in (a, c)}
    # in a whole search: an odd population makes pymoo cut offspring, yet every slot runs a backbone
    cfg = fake_cfg(tmp_path, "search.population=15", "search.generations=10", "search.max_backbones=40",
                   "search.random_baseline=false")
    res = fake_search(cfg)
    cands = [json.loads(line) for line in (res.search_dir / "candidates.jsonl").read_text().splitlines()]
    assert len({c["arch_key"] for c in cands if c["scored"]}) == cfg.search.max_backbones


# ----------------------------------------------------------------------------- search
def _check_front(search_dir: Path, cfg: Config, backend: FakeBackend) -> list[dict]:
    payload = json.loads((search_dir / "pareto.json").read_text())
    front = payload["front"]
    cons = Constraints.from_config(cfg.search)
    space = SearchSpace.from_config(cfg.space)
    grid = threshold_grid(cfg.search.threshold_min, cfg.search.threshold_max, cfg.search.threshold_steps)
    for r in front:
        g = genome_from_record(r)
        # recompute from scratch: the reference decision rule on the synthetic cache, the cost model
        cache = backend.prediction_cache(g.arch)
        macs = backend.exit_macs(g.arch, g.exits)
        acc, counts, cost = score_direct(cache, g.exits, grid[list(g.thresholds)], cfg.exits.criterion, macs)
        assert r["accuracy"] == pytest.approx(acc) and r["expected_macs"] == pytest.approx(cost)
        assert acc >= cons.min_accuracy and cost <= cons.max_expected_macs
        assert cons.max_peak_macs <= 0 or macs[-1] <= cons.max_peak_macs
        assert cons.max_params <= 0 or backend.params(g.arch, g.exits) <= cons.max_params
        space.validate(g.arch)
    for a in front:
        assert not any(dominates(b, a, "expected_macs") for b in front if b is not a)
    assert [r["expected_macs"] for r in front] == sorted(r["expected_macs"] for r in front)
    rows = (search_dir / "pareto.csv").read_text().strip().splitlines()
    assert len(rows) == len(front) + 1
    return front


def test_refinement_without_a_budget_seeks_the_cheapest_above_the_floor(tmp_path: Path) -> None:
    floor = 0.5
    cfg = fake_cfg(tmp_path, "search.max_expected_macs=0", f"search.min_accuracy={floor}")
    res = fake_search(cfg)
    cands = [json.loads(line) for line in (res.search_dir / "candidates.jsonl").read_text().splitlines()]
    by_pair: dict[tuple, list[dict]] = {}
    for c in cands:
        if c["scored"] and c["exits"]:
            by_pair.setdefault((c["arch_key"], tuple(c["exits"])), []).append(c)
    checked = 0
    for recs in by_pair.values():
        refined = [c for c in recs if c["threshold_source"] == "refined"]
        accurate = [c for c in recs if c["accuracy"] >= floor]
        if not refined or not accurate:
            continue
        checked += 1
        # the refined thresholds reach the floor at no more MACs than any other thresholds of the pair
        assert refined[0]["accuracy"] >= floor
        assert refined[0]["expected_macs"] <= min(c["expected_macs"] for c in accurate) + 1e-6
    assert checked >= 3
    # and they exit early: cheaper than the same backbone and exits with no exit taken
    assert any(c["expected_macs"] < c["peak_macs"] for c in cands if c["threshold_source"] == "refined")


def test_search_front_satisfies_constraints(tmp_path: Path) -> None:
    cfg = fake_cfg(tmp_path, "search.max_peak_macs=4e5", "search.max_params=2e4", "search.random_baseline=true")
    res = fake_search(cfg)
    assert res.exit_code == 0 and res.front
    front = _check_front(res.search_dir, cfg, FakeBackend(SearchSpace.from_config(cfg.space)))
    # the reported front is the front of every admissible candidate evaluated
    cands = [json.loads(line) for line in (res.search_dir / "candidates.jsonl").read_text().splitlines()]
    main = [c for c in cands if c["algorithm"] == "nsga2"]
    assert [r["id"] for r in front] == [r["id"] for r in pareto_front([c for c in main if c["feasible"]],
                                                                      "expected_macs")]
    assert len({c["key"] for c in main}) == len(main)
    assert {c["threshold_source"] for c in main} == {"sampled", "evolved", "refined"}
    assert {c["threshold_source"] for c in main if c["generation"] == 1} <= {"sampled", "refined"}
    assert len({c["arch_key"] for c in main if c["scored"]}) <= cfg.search.max_backbones
    history = json.loads((res.search_dir / "history.json").read_text())
    hv = [h["hypervolume"] for h in history["nsga2"]["generations"]]
    assert len(hv) == cfg.search.generations and hv == sorted(hv)
    assert len(history["random"]["generations"]) >= 1 and res.hypervolume_random is not None
    assert history["random"]["generations"][-1]["n_eval"] == history["nsga2"]["generations"][-1]["n_eval"]
    assert (res.search_dir / "pareto.png").stat().st_size > 0


def test_resume_reproduces_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = fake_search(fake_cfg(tmp_path / "full", "search.random_baseline=true"))
    cfg = fake_cfg(tmp_path / "killed", "search.random_baseline=true")
    original, seen = Runner.on_generation, {"n": 0}

    def killed_after(self: Runner, phase, generation: int) -> None:
        original(self, phase, generation)
        seen["n"] += 1
        if seen["n"] in (2, 6):  # once inside NSGA-II, once inside the random baseline
            raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "on_generation", killed_after)
    for resume in (False, True):
        with pytest.raises(KeyboardInterrupt):
            fake_search(cfg, resume)
    res = fake_search(cfg, True)
    for name in ("candidates.jsonl", "pareto.json", "history.json"):
        assert (res.search_dir / name).read_text() == (full.search_dir / name).read_text(), name


def test_a_random_phase_cut_short_is_no_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = fake_cfg(tmp_path, "search.random_baseline=true")
    original, seen = Runner.on_generation, {"n": 0}

    def killed_in_random(self: Runner, phase, generation: int) -> None:
        original(self, phase, generation)
        seen["n"] += 1
        if seen["n"] == cfg.search.generations + 1:  # the random baseline's first generation
            raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "on_generation", killed_in_random)
    with pytest.raises(KeyboardInterrupt):
        fake_search(cfg)
    monkeypatch.setattr(Runner, "on_generation", original)
    history = json.loads((cfg.run_dir / "search" / "history.json").read_text())
    assert 1 <= len(history["random"]["generations"]) < cfg.search.generations  # the partial phase was saved
    # resumed with the baseline switched off: no comparison with the partial random search
    res = fake_search(fake_cfg(tmp_path, "search.random_baseline=false"), resume=True)
    assert res.hypervolume_random is None and res.summary["hypervolume_ratio_vs_random"] is None
    assert res.front
    # nor does the report's ablation (read from history.json) or candidates.jsonl see it
    assert set(json.loads((res.search_dir / "history.json").read_text())) == {"nsga2"}
    cands = [json.loads(line) for line in (res.search_dir / "candidates.jsonl").read_text().splitlines()]
    assert {c["algorithm"] for c in cands} == {"nsga2"}


def test_search_seed_reseeds_the_search_not_the_split(tmp_path: Path) -> None:
    def visited(name: str, *extra: str) -> str:
        res = fake_search(fake_cfg(tmp_path / name, "search.generations=2", *extra))
        return (res.search_dir / "candidates.jsonl").read_text()

    run_seed = visited("run-seed")
    assert visited("same", "search.seed=0") == run_seed
    assert visited("own", "search.seed=5") != run_seed
    # with its own seed the search visits what a run of that seed visits, while seed=0 keeps the split
    assert visited("own", "search.seed=5") == visited("run-seed-5", "seed=5")
    with pytest.raises(RunError, match="other settings"):
        fake_search(fake_cfg(tmp_path / "run-seed", "search.generations=2", "search.seed=5"), resume=True)


def test_settings_no_search_can_use_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="min_accuracy=1.0"):
        fake_search(fake_cfg(tmp_path, "search.min_accuracy=1.0"))
    with pytest.raises(ConfigError, match="threshold_min=0.5 is not below search.threshold_max=0.5"):
        fake_cfg(tmp_path, "search.threshold_min=0.5", "search.threshold_max=0.5")  # one threshold: no trade-off


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    fake_search(fake_cfg(tmp_path, "search.generations=1"))
    with pytest.raises(RunError, match="other settings"):
        fake_search(fake_cfg(tmp_path, "search.generations=1", "search.min_accuracy=0.5"), resume=True)
    with pytest.raises(RunError, match="nothing to resume"):
        fake_search(fake_cfg(tmp_path / "none"), resume=True)
    # the same settings on other weights: the archive's old scores must not meet the new ones
    cfg = fake_cfg(tmp_path, "search.generations=1")
    retrained = FakeBackend(SearchSpace.from_config(cfg.space))
    retrained.scores_id = "another checkpoint"
    with pytest.raises(RunError, match="another supernet checkpoint"):
        run_search(cfg, True, backend=retrained, track=False)
    fake_search(cfg, resume=True)  # the original scorer resumes


def test_infeasible_constraints_give_a_clear_message(tmp_path: Path) -> None:
    res = fake_search(fake_cfg(tmp_path, "search.min_accuracy=0.99", "search.generations=2"))
    assert res.exit_code == INFEASIBLE_EXIT and not res.front
    assert res.message.startswith("no candidate reached min_accuracy=0.99; best was 0.")
    payload = json.loads((res.search_dir / "pareto.json").read_text())
    assert payload["front"] == [] and len(payload["closest"]) == 5
    assert (res.search_dir / "candidates.jsonl").stat().st_size > 0


def test_infeasible_explanations_name_the_binding_constraint() -> None:
    from search.front import explain_infeasible

    def recs(cons: Constraints, *points: tuple[float, float, float, int]) -> list[dict]:
        out = [{"accuracy": a, "expected_macs": e, "peak_macs": p, "params": n} for a, e, p, n in points]
        return [dict(r, violations=cons.violations(r)) for r in out]

    peak = Constraints(min_accuracy=0.5, max_peak_macs=1e6)
    assert explain_infeasible(recs(peak, (0.9, 1e6, 3e6, 1), (0.7, 1e6, 1.5e6, 1), (0.8, 1e6, 1.5e6, 1)), peak) == (
        "no candidate reached max_peak_macs=1e+06; the lowest peak_macs was 1.5M MACs (accuracy 0.8)")
    params = Constraints(max_expected_macs=1e6, max_params=5e5)
    assert explain_infeasible(recs(params, (0.9, 1e5, 1e6, 8e5), (0.7, 1e5, 1e6, 6e5)), params) == (
        "no candidate reached max_params=5e+05; the lowest params was 0.6M params (accuracy 0.7)")
    # each limit met by some candidate, never all by one: the accuracy the cost limits leave, and the
    # cost that the accuracy floor needs
    both = Constraints(min_accuracy=0.6, max_expected_macs=1e6)
    points = (0.7, 3e6, 4e6, 1), (0.65, 2e6, 4e6, 1), (0.5, 8e5, 4e6, 1), (0.55, 9e5, 4e6, 1), (0.4, 1e5, 4e6, 1)
    assert explain_infeasible(recs(both, *points), both) == (
        "no candidate satisfied accuracy >= 0.6, expected MACs <= 1 M together: within the cost limits the best "
        "accuracy was 0.55 (at 0.9M MACs), below min_accuracy=0.6; reaching it took at least 2M expected MACs")
    # the accurate candidates fit the expected-MACs limit; their peak MACs are what binds
    two = Constraints(min_accuracy=0.6, max_expected_macs=1e6, max_peak_macs=2e6)
    assert explain_infeasible(recs(two, (0.7, 8e5, 3e6, 1), (0.5, 5e5, 1e6, 1)), two).endswith(
        "below min_accuracy=0.6; reaching it took at least 3M peak MACs")
    # accurate candidates within each cost limit, none within both: no single cost is named
    assert explain_infeasible(recs(two, (0.7, 8e5, 3e6, 1), (0.7, 2e6, 1e6, 1), (0.5, 5e5, 1e6, 1)), two).endswith(
        "below min_accuracy=0.6; each cost limit alone was met by an accurate candidate, never all by one")
    # no accuracy floor (or no candidate within every cost limit): only the limits can be named
    costs = Constraints(max_expected_macs=1e6, max_peak_macs=2e6)
    assert explain_infeasible(recs(costs, (0.9, 5e5, 3e6, 1), (0.9, 3e6, 1e6, 1)), costs) == (
        "no candidate satisfied expected MACs <= 1 M, peak MACs <= 2 M together")
    # every backbone over the cost limit, so none was run (accuracy 0 by convention): the cost binds, not
    # the accuracy floor
    unrun = [dict(r, scored=False) for r in recs(both, (0.0, 2e6, 4e6, 1), (0.0, 3e6, 5e6, 1))]
    assert explain_infeasible(unrun, both) == (
        "no candidate reached max_expected_macs=1e+06; the lowest expected_macs was 2M MACs (not run: over the "
        "cost limits)")
    # one run below the floor beside unrun ones: the floor is judged on the run one alone
    assert explain_infeasible(unrun + recs(both, (0.5, 8e5, 4e6, 1)), both) == (
        "no candidate reached min_accuracy=0.6; best was 0.5 at 0.8M MACs")


def test_cost_infeasible_backbones_are_never_run(tmp_path: Path) -> None:
    cfg = fake_cfg(tmp_path, "search.max_expected_macs=2e4", "search.min_accuracy=0.0", "search.generations=2")
    backend = FakeBackend(SearchSpace.from_config(cfg.space))
    res = run_search(cfg, backend=backend, track=False)
    assert res.exit_code == INFEASIBLE_EXIT and backend.computed == []
    assert "max_expected_macs" in res.message


@pytest.mark.parametrize("limit", ["max_expected_macs", "max_peak_macs", "max_params"])
def test_cost_infeasible_is_exactly_what_no_exit_set_can_meet(tmp_path: Path, limit: str) -> None:
    import dataclasses

    from search.evaluate import CandidateEvaluator

    cfg = fake_cfg(tmp_path)
    space = SearchSpace.from_config(cfg.space)
    backend, codec = FakeBackend(space), GenomeCodec(space, cfg.search.threshold_steps)
    rng = np.random.default_rng(0)
    archs = list({a.key(): a for a in [space.smallest(), space.largest()]
                  + [codec.random_arch(rng) for _ in range(40)]}.values())

    def every_exit_set(arch: Arch) -> list[tuple[int, ...]]:
        avail = space.available_exits(arch)
        return [e for k in range(len(avail) + 1) for e in itertools.combinations(avail, k)]

    # per exit set, what no thresholds can go below: every sample leaving at its cheapest exit (the expected
    # cost is a mix of the cumulative costs), the whole network's cost, its parameters
    def lowest(arch: Arch, exits: tuple[int, ...]) -> float:
        macs = backend.exit_macs(arch, exits)
        return {"max_expected_macs": macs.min(), "max_peak_macs": macs[-1],
                "max_params": backend.params(arch, exits)}[limit]

    bounds = {a.key(): [lowest(a, e) for e in every_exit_set(a)] for a in archs}
    cap = float(np.median([min(b) for b in bounds.values()]))
    off = dict.fromkeys(["min_accuracy", "max_expected_macs", "max_peak_macs", "max_params"], 0.0)
    search = dataclasses.replace(cfg.search, **dict(off, **{limit: cap}))
    ev = CandidateEvaluator(codec, backend, search, "softmax")
    infeasible = [ev.cost_infeasible(a) for a in archs]
    assert 0 < sum(infeasible) < len(archs)
    grid = threshold_grid(search.threshold_min, search.threshold_max, search.threshold_steps)
    for a, out in zip(archs, infeasible):
        assert out == (min(bounds[a.key()]) > cap), (a.key(), min(bounds[a.key()]), cap)
        if out:  # and the scorer agrees at the most eager thresholds, the cheapest each exit set runs
            for e in every_exit_set(a):
                macs = backend.exit_macs(a, e)
                _, _, cost = score_direct(backend.prediction_cache(a), e, grid[[0] * len(e)], "softmax", macs)
                rec = {"accuracy": 1.0, "expected_macs": cost, "peak_macs": macs[-1],
                       "params": backend.params(a, e)}
                assert not ev.constraints.satisfied(rec), (a.key(), e)


def test_more_initial_backbones_than_the_budget_keep_the_population_full(tmp_path: Path) -> None:
    cfg = fake_cfg(tmp_path, "search.max_backbones=2", "search.init_backbones=8", "search.generations=1")
    res = fake_search(cfg)
    history = json.loads((res.search_dir / "history.json").read_text())
    assert history["nsga2"]["generations"][0]["n_eval"] == cfg.search.population
    assert res.backbones <= 2


def test_hypervolume_is_the_area_dominated_up_to_the_reference() -> None:
    from search.front import HvReference, hypervolume

    ref = HvReference(error=0.5, cost=1e6)

    def rec(acc: float, macs: float, feasible: bool = True) -> dict:
        return {"accuracy": acc, "expected_macs": macs, "feasible": feasible}

    a = rec(0.8, 2.5e5)  # normalised (0.4, 0.25): a 0.6 x 0.75 rectangle
    assert hypervolume([a], ref, "expected_macs") == pytest.approx(0.45)
    b = rec(0.9, 5e5)  # (0.2, 0.5): adds the 0.2 x 0.5 strip a does not dominate
    assert hypervolume([a, b], ref, "expected_macs") == pytest.approx(0.55)
    # inadmissible records, and ones beyond the reference point, add nothing
    others = [rec(0.99, 1e5, feasible=False), rec(0.95, 1.5e6), rec(0.4, 1e5)]
    assert hypervolume([a, b] + others, ref, "expected_macs") == pytest.approx(0.55)
    assert hypervolume(others, ref, "expected_macs") == 0.0


@pytest.mark.parametrize("limits", [(), ("search.min_accuracy=0", "search.max_expected_macs=0")])
def test_search_hypervolume_is_referred_to_the_constraints(tmp_path: Path, limits: tuple[str, ...]) -> None:
    cfg = fake_cfg(tmp_path, "search.generations=2", *limits)
    backend = FakeBackend(SearchSpace.from_config(cfg.space))
    res = run_search(cfg, backend=backend, track=False)
    payload = json.loads((res.search_dir / "pareto.json").read_text())
    s, largest = cfg.search, backend.space.largest()
    # without limits: every error counts, and the dearest network's cost (all exits attached)
    err = 1 - s.min_accuracy if s.min_accuracy > 0 else 1.0
    cost = s.max_expected_macs or backend.exit_macs(largest, tuple(backend.space.available_exits(largest)))[-1]
    assert payload["reference_point"] == {"error": pytest.approx(err), "cost": pytest.approx(cost)}
    # the staircase under the front (sorted by cost, so by rising accuracy), in reference units
    assert len(res.front) >= 2
    e = [(1 - r["accuracy"]) / err for r in res.front]
    c = [r["expected_macs"] / cost for r in res.front] + [1.0]
    area = sum((1 - e[i]) * (c[i + 1] - c[i]) for i in range(len(e)))
    assert res.hypervolume == pytest.approx(area, rel=1e-9) and payload["hypervolume"] == res.hypervolume
    assert 0 < area < 1


@pytest.mark.parametrize("algorithm", ["random", "nsga2"])  # alone, and as NSGA-II's baseline
def test_random_search_keeps_to_the_backbone_budget(tmp_path: Path, algorithm: str) -> None:
    from search.report import read_candidates

    cfg = fake_cfg(tmp_path, f"search.algorithm={algorithm}", "search.random_baseline=true", "search.max_backbones=3",
                   "search.generations=3")
    backend = FakeBackend(SearchSpace.from_config(cfg.space))
    res = run_search(cfg, backend=backend, track=False)
    recs = [r for r in read_candidates(res.search_dir / "candidates.jsonl") if r["algorithm"] == "random"]
    assert len(recs) >= 40  # uniform draws: nearly all on distinct archs, were the budget not enforced
    # archs that no exit set can bring within the cost limits are never run, and take no slot
    assert len({r["arch_key"] for r in recs if r["scored"]}) == 3
    assert len(set(backend.computed)) <= (3 if algorithm == "random" else 6)


def test_damaged_cache_file_is_recomputed(tmp_path: Path) -> None:
    from search.cache import CacheStore

    arch = SearchSpace.from_config(load_config(TINY, device_type="cpu").space).smallest()
    store = CacheStore(tmp_path, "fp")
    path = store.save(arch, _random_cache(P=3, N=50, seed=9))
    whole = path.read_bytes()
    assert store.load(arch) is not None
    for cut in (len(whole) // 2, len(whole) - 10, 40):
        path.write_bytes(whole[:cut])
        assert store.load(arch) is None, cut


def test_diverged_supernet_is_refused_by_checkpoint(tmp_path: Path) -> None:
    from search.cache import compute_cache
    from supernet.network import create_supernet

    cfg = load_config(TINY, [f"out_dir={tmp_path}"], device_type="cpu")
    space = SearchSpace.from_config(cfg.space)
    torch.manual_seed(0)
    model = create_supernet(cfg)
    x, y = torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    compute_cache(model, space.smallest(), [x], [(x, y)], "softmax")  # finite: fine
    with torch.no_grad():
        next(model.heads.parameters()).fill_(float("nan"))
    ckpt = tmp_path / "best.pt"
    with pytest.raises(RunError, match=rf"{re.escape(str(ckpt))} .*non-finite logits.*retrain.*search\.checkpoint"):
        compute_cache(model, space.smallest(), [x], [(x, y)], "softmax", ckpt)


@pytest.mark.parametrize("criterion, head", [("softmax", "light"), ("entropy", "light"), ("learned", "light"),
                                             ("learned", "nachos")])
def test_score_cache_rows_match_the_extracted_network(criterion: str, head: str) -> None:
    from exits.policies import class_logits, decide_exits, exit_confidence, exit_scores
    from search.cache import compute_cache
    from supernet.network import create_supernet

    cfg = load_config(TINY, [f"exits.criterion={criterion}", f"exits.head={head}"], device_type="cpu")
    space = SearchSpace.from_config(cfg.space)
    torch.manual_seed(0)
    model = create_supernet(cfg)
    # untrained heads give near-uniform outputs: spread them, so that thresholds split the samples
    for m in model.heads.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=1.0)
    torch.nn.init.normal_(model.final.classifier.weight, std=1.0)
    with torch.no_grad():  # the last class must win somewhere: it is the column a learned head adds
        model.final.classifier.bias[-1] = 2.0
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 3, 32, 32, generator=gen)]
    val = [(torch.randn(100, 3, 32, 32, generator=gen), torch.randint(0, 10, (100,), generator=gen))
           for _ in range(2)]
    arch = space.largest()
    exits = tuple(space.available_exits(arch))
    assert len(exits) >= 2
    cache = compute_cache(model, arch, calib, val, criterion)
    net = model.extract(arch, list(exits)).eval()
    with torch.no_grad():
        outs = [torch.cat(o) for o in zip(*(net(x) for x, _ in val))]
    # the final classifier has no confidence column: all its logits are classes, scored by softmax
    crits = [criterion] * len(exits) + ["softmax" if criterion == "learned" else criterion]
    assert outs[-1].shape[-1] == 10 and (outs[-1].argmax(-1) == 9).any()
    for row, o, crit in zip(exits + (cache.num_positions,), outs, crits):
        np.testing.assert_array_equal(cache.pred[row], class_logits(o, crit).argmax(-1).numpy())
        np.testing.assert_allclose(cache.conf[row], exit_confidence(o, crit).numpy(), atol=1e-5)
    # the decisions scored from the cache are the network's (cumulative scores when learned)
    y = torch.cat([y for _, y in val])
    conf = torch.stack([exit_confidence(o, criterion) for o in outs[:-1]])
    preds = torch.stack([class_logits(o, c).argmax(-1) for o, c in zip(outs, crits)])
    # thresholds between observed scores (no ties that rounding could flip)
    scores = exit_scores(conf, criterion)
    for q in (0.3, 0.7):
        t = torch.quantile(scores.double(), q, dim=1)
        taken = decide_exits(conf, t, criterion)
        acc, counts, _ = score_direct(cache, exits, t.numpy(), criterion, np.ones(len(exits) + 1))
        assert counts[0] > 0 and counts[-1] > 0
        np.testing.assert_array_equal(counts, torch.bincount(taken, minlength=len(exits) + 1).numpy())
        assert acc == int((preds[taken, torch.arange(len(y))] == y).sum()) / len(y)


def test_missing_checkpoint_names_the_fix(tmp_path: Path) -> None:
    cfg = load_config(TINY, [f"out_dir={tmp_path}", "wandb.mode=disabled"], device_type="cpu")
    with pytest.raises(RunError, match=r"make supernet CONFIG=configs/tiny.yaml"):
        run_search(cfg, config_path=TINY, track=False)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """An untrained tiny supernet: the checks below are about bookkeeping, not accuracy."""
    from nachos.config import config_to_dict
    from nachos.runtime import atomic_torch_save
    from supernet.network import create_supernet

    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(TINY, [f"out_dir={out}", "wandb.mode=disabled", "data.val_subset=300",
                             "data.train_subset=512", "search.bn_calib_batches=1", "search.population=6",
                             "search.generations=2", "search.max_backbones=2", "search.init_backbones=2",
                             "search.threshold_min=0.1", "search.threshold_max=0.9", "search.threshold_steps=9",
                             "search.min_accuracy=0.01", "search.max_expected_macs=5e6"], device_type="cpu")
    torch.manual_seed(0)
    space = SearchSpace.from_config(cfg.space)
    model = create_supernet(cfg)
    for m in model.heads.modules():  # untrained heads start near-uniform: spread their confidences
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=1.0)
    atomic_torch_save({"model": model.state_dict(), "config": config_to_dict(cfg),
                       "space_hash": space.space_hash()}, cfg.run_dir / "best.pt")
    from search.backend import SupernetBackend
    backend = SupernetBackend(cfg)
    res = run_search(cfg, backend=backend, track=False)
    return cfg, backend, res


@pytest.mark.slow
def test_cache_matches_extracted_network(tiny_run) -> None:
    from exits.policies import class_logits, decide_exits, exit_confidence
    from supernet.bn import recalibrate_bn
    from supernet.costs import segment_macs

    cfg, backend, res = tiny_run
    assert res.exit_code == 0 and res.front
    crit = cfg.exits.criterion
    grid = threshold_grid(cfg.search.threshold_min, cfg.search.threshold_max, cfg.search.threshold_steps)
    cands = [json.loads(line) for line in (res.search_dir / "candidates.jsonl").read_text().splitlines()]
    partial = [r for r in cands if r["exits"] and 0 < r["exit_rates"][0] < 1]  # some samples leave early
    picked = [r for r in res.front if r["exits"]][:1] + partial[:1] + [r for r in partial if len(r["exits"]) >= 2][:1]
    assert len(picked) == 3
    model = backend.model
    for r in picked:
        g = genome_from_record(r)
        model.set_active(g.arch)
        calib = backend.calibration_batches()
        recalibrate_bn(model, calib, len(calib))
        net = model.extract(g.arch, list(g.exits)).eval()
        outs, labels = None, []
        with torch.no_grad():
            for x, y in backend.val_loader():
                o = net(x)
                outs = o if outs is None else [torch.cat([a, b]) for a, b in zip(outs, o)]
                labels.append(y)
        y = torch.cat(labels)
        conf = torch.stack([exit_confidence(o, crit) for o in outs[:-1]]) if g.exits else torch.zeros(0, len(y))
        taken = decide_exits(conf, torch.tensor(grid[list(g.thresholds)]), crit)  # (N,) exit per sample
        preds = torch.stack([class_logits(o, crit).argmax(-1) for o in outs])
        pred = preds[taken, torch.arange(len(y))]
        counts = torch.bincount(taken, minlength=len(g.exits) + 1)
        assert r["exit_counts"] == counts.tolist()
        assert r["accuracy"] == pytest.approx(int((pred == y).sum()) / len(y), abs=1e-12)
        # per-sample MACs: the segments it ran plus every head it was asked at
        segs, heads = segment_macs(net)
        per_exit = [sum(segs[: i + 1]) + sum(heads[: i + 1]) for i in range(len(g.exits))]
        per_exit.append(sum(segs) + sum(heads))
        measured = np.array(per_exit, dtype=np.float64)[taken.numpy()].mean()
        assert r["expected_macs"] == pytest.approx(measured, rel=1e-9)
        assert r["peak_macs"] == pytest.approx(per_exit[-1], rel=1e-9)


@pytest.mark.slow
def test_tiny_search_outputs_and_cache_reuse(tiny_run) -> None:
    cfg, backend, res = tiny_run
    for name in ("candidates.jsonl", "pareto.json", "pareto.csv", "history.json", "pareto.png", "summary.json"):
        assert (res.search_dir / name).is_file(), name
    assert res.backbones <= cfg.search.max_backbones
    assert len(list((res.search_dir / "cache").glob("*.npz"))) == len(backend.timer.seconds)
    computed = len(backend.timer.seconds)
    again = run_search(cfg, resume=True, backend=backend, track=False)  # finished: only the outputs again
    assert len(backend.timer.seconds) == computed
    assert [r["key"] for r in again.front] == [r["key"] for r in res.front]
    # a cache file from another checkpoint is recomputed, never trusted
    arch = Arch.from_dict(res.front[0]["arch"])
    cache = backend.store.load(arch)
    assert cache is not None
    backend.store.fp, fp = "other", backend.store.fp
    assert backend.store.load(arch) is None
    backend.store.fp = fp


@pytest.mark.slow
def test_calibration_images_key_the_score_caches(tiny_run) -> None:
    import dataclasses

    from search.backend import SupernetBackend

    cfg, backend, _ = tiny_run
    assert SupernetBackend(cfg).scores_id == backend.scores_id
    # the same validation split, BN statistics from other training images
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_subset=256))
    assert SupernetBackend(other).scores_id != backend.scores_id


@pytest.mark.slow
def test_scores_id_is_of_the_weights_loaded(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import shutil

    from search.backend import SupernetBackend

    cfg, backend, _ = tiny_run
    ckpt = tmp_path / "best.pt"
    shutil.copy(cfg.run_dir / "best.pt", ckpt)
    load = torch.load

    def load_then_replaced(*args, **kwargs):
        weights = load(*args, **kwargs)
        ckpt.write_bytes(ckpt.read_bytes() + b"retrained")  # a supernet run still training replaces best.pt
        return weights

    monkeypatch.setattr(torch, "load", load_then_replaced)
    other = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, checkpoint=str(ckpt)))
    assert SupernetBackend(other).scores_id == backend.scores_id


@pytest.mark.slow
def test_incompatible_checkpoint_or_table_names_the_fix(tiny_run, tmp_path: Path) -> None:
    import shutil

    from search.backend import SupernetBackend
    from supernet.costs import MacTable

    cfg, _, _ = tiny_run
    other = load_config(TINY, [f"out_dir={tmp_path}", "wandb.mode=disabled", "data.val_subset=300",
                               "data.train_subset=512"], device_type="cpu")
    other.run_dir.mkdir(parents=True)
    shutil.copy(cfg.run_dir / "best.pt", other.run_dir / "best.pt")
    space = SearchSpace.from_config(other.space)
    MacTable(space, {"head": "nachos", "head_width": 64, "criterion": "softmax"}, "macs",
             path=other.run_dir / "macs.json").save()
    with pytest.raises(RunError, match="nachos macs build"):
        SupernetBackend(other, TINY)
    (other.run_dir / "macs.json").unlink()
    with pytest.raises(RunError, match="nachos macs build --metric latency"):
        SupernetBackend(load_config(TINY, [f"out_dir={tmp_path}", "search.metric=latency"], device_type="cpu"), TINY)
    wider = load_config(TINY, [f"out_dir={tmp_path}", "space.final_widths=[64,256]"], device_type="cpu")
    fix = r"trained on search space .*its .*config\.yaml.*make supernet CONFIG=configs/tiny.yaml"
    with pytest.raises(RunError, match=fix):
        SupernetBackend(wider, TINY)
    # another seed draws another validation split: mostly images the supernet trained on
    reseeded = load_config(TINY, [f"out_dir={cfg.out_dir}", f"name={cfg.name}", "data.val_subset=300",
                                  "data.train_subset=512", f"seed={cfg.seed + 1}"], device_type="cpu")
    with pytest.raises(RunError, match=rf"validation split of seed={cfg.seed}\b.*seed={cfg.seed + 1}.*inflated"):
        SupernetBackend(reseeded, TINY)
    thinner = load_config(TINY, [f"out_dir={cfg.out_dir}", f"name={cfg.name}", "data.val_subset=100",
                                 "data.train_subset=256"], device_type="cpu")
    SupernetBackend(thinner, TINY)  # subsets of the two sides stay disjoint: allowed


def test_a_supernet_that_held_out_other_images_is_refused(tiny_run, tmp_path: Path) -> None:
    from nachos.data import load_splits
    from nachos.runtime import atomic_torch_save
    from search.backend import SupernetBackend

    cfg, _, _ = tiny_run
    ckpt = torch.load(cfg.run_dir / "best.pt", map_location="cpu", weights_only=False)
    copy = load_config(TINY, [f"out_dir={tmp_path}", "wandb.mode=disabled", "data.val_subset=100",
                              "data.train_subset=256"], device_type="cpu")
    copy.run_dir.mkdir(parents=True)
    (copy.run_dir / "macs.json").symlink_to(cfg.run_dir / "macs.json")
    # same seed and val_fraction, but the data changed under it (images added to a folder source)
    atomic_torch_save(dict(ckpt, held_out_digest="another-folder"), copy.run_dir / "best.pt")
    with pytest.raises(RunError, match="not those .*best.pt held out, though the split's settings match"):
        SupernetBackend(copy, TINY)
    atomic_torch_save(dict(ckpt, held_out_digest=load_splits(cfg).held_out_digest), copy.run_dir / "best.pt")
    SupernetBackend(copy, TINY)  # the same held-out images, thinner subsets: allowed


@pytest.mark.slow
def test_search_never_reads_the_test_split(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import shutil

    import nachos.data
    import search.backend
    from search.backend import SupernetBackend
    from search.report import read_candidates

    cfg, first, res = tiny_run
    load, touched = nachos.data.load_splits, []

    class WithoutTest:  # the splits with the test images out of reach: a read is recorded and refused
        def __init__(self, splits) -> None:
            self._splits = splits

        def __getattr__(self, name: str):
            if name.startswith("test_"):
                touched.append(name)
                raise AssertionError(f"the search read splits.{name}")
            return getattr(self._splits, name)

    for module in (nachos.data, search.backend):
        monkeypatch.setattr(module, "load_splits", lambda *a, **k: WithoutTest(load(*a, **k)))
    copy = dataclasses.replace(cfg, out_dir=str(tmp_path))
    copy.run_dir.mkdir(parents=True)
    shutil.copy(cfg.run_dir / "best.pt", copy.run_dir / "best.pt")
    (copy.run_dir / "macs.json").symlink_to(cfg.run_dir / "macs.json")
    backend = SupernetBackend(copy)
    again = run_search(copy, backend=backend, track=False)
    assert isinstance(backend.splits, WithoutTest) and backend.timer.seconds  # scored here, on these splits
    assert touched == []
    # the same scores as the search that could see the test split
    assert backend.scores_id == first.scores_id

    def scores(folder: Path) -> list[tuple]:
        return [(r["key"], r["accuracy"], r["expected_macs"], r["exit_counts"])
                for r in read_candidates(folder / "candidates.jsonl")]

    assert scores(again.search_dir) == scores(res.search_dir)
    assert [r["key"] for r in again.front] == [r["key"] for r in res.front]


def test_wandb_offline_logs_hypervolume_and_front(tmp_path: Path) -> None:
    from nachos.tracking import read_offline_history

    cfg = fake_cfg(tmp_path, "wandb.mode=offline", "search.generations=2")
    run_search(cfg, backend=FakeBackend(SearchSpace.from_config(cfg.space)), track=True)
    rows = read_offline_history(sorted((cfg.run_dir / "wandb").glob("offline-run-*"))[-1], wait_s=30)
    hv = [r["search/nsga2/hypervolume"] for r in rows if "search/nsga2/hypervolume" in r]
    assert len(hv) == 2 and hv[0] <= hv[1]
    assert any("search/nsga2/front/_type" in r or "search/nsga2/front" in r for r in rows)
    assert any(k.startswith("search/admissible") for r in rows for k in r)


def test_random_alone_and_latency_objective(tmp_path: Path) -> None:
    res = fake_search(fake_cfg(tmp_path / "random", "search.algorithm=random", "search.generations=2"))
    assert res.algorithm == "random" and res.front and res.hypervolume_random is None
    history = json.loads((res.search_dir / "history.json").read_text())
    assert list(history) == ["random"] and history["random"]["generations"][-1]["n_eval"] == 32

    class LatencyBackend(FakeBackend):  # latency not proportional to MACs: later exits are cheap
        def exit_latency(self, arch: Arch, exits: tuple[int, ...]) -> np.ndarray:
            return np.sqrt(self.exit_macs(arch, exits)) * 1e-6

    cfg = fake_cfg(tmp_path / "latency", "search.metric=latency", "search.generations=2")
    res = run_search(cfg, backend=LatencyBackend(SearchSpace.from_config(cfg.space)), track=False)
    lat = [r["expected_latency"] for r in res.front]
    assert res.front and lat == sorted(lat)
    assert all(r["expected_macs"] <= cfg.search.max_expected_macs for r in res.front)  # constraints stay on MACs
    assert json.loads((res.search_dir / "pareto.json").read_text())["cost_key"] == "expected_latency"
    with open(res.search_dir / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["expected_latency"]) for r in rows] == pytest.approx(lat)  # the objective, in its own column
