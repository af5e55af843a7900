"""Search scoring: (exit set, thresholds) configurations scored per second from a backbone's
prediction cache, against re-running the network for each configuration.

The network is an untrained supernet of the default ``configs/cifar10.yaml`` (4 candidate exits,
5,000 validation images; timing does not depend on the weights), at its smallest subnet, the
cheapest to re-run. The baseline for one configuration is what scoring without a cache costs
at the least: one forward pass over the validation split, then ``decide_exits``. The cached
path is the search's own: one scorer per (backbone, non-empty exit set), thresholds batched,
scorer construction included in the time.
"""
from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch

from bench import bench_line

CONFIG = "configs/cifar10.yaml"


def _setup(quick: bool) -> tuple[Any, Any, Any]:
    from nachos.config import load_config
    from nachos.data import load_splits, make_loader
    from search.cache import compute_cache
    from supernet.network import create_supernet
    from supernet.space import SearchSpace

    cfg = load_config(CONFIG, ["wandb.mode=disabled"] + (["data.val_subset=1000"] if quick else []), device_type="cpu")
    torch.manual_seed(0)
    model = create_supernet(cfg).eval()
    for m in model.heads.modules():  # spread the untrained heads' confidences so that exits trigger
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=1.0)
    splits = load_splits(cfg)
    val = make_loader(cfg, splits.val_x, splits.val_y, "cpu", train=False, seed=0, mean=splits.mean, std=splits.std)
    calib = [x for x, _ in itertools.islice(iter(val), 1)]
    arch = SearchSpace.from_config(cfg.space).smallest()
    cache = compute_cache(model, arch, calib, val, cfg.exits.criterion)
    return cfg, (model, val), cache


def _network_per_config(cfg: Any, model: Any, val: Any, exits: tuple[int, ...], thresholds: np.ndarray,
                        repeats: int) -> float:
    from exits.policies import decide_exits, exit_confidence

    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            outs = [model(x) for x, _ in val]
            conf = torch.stack([torch.cat([exit_confidence(o[e], cfg.exits.criterion) for o in outs]) for e in exits])
            decide_exits(conf, torch.as_tensor(thresholds), cfg.exits.criterion)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def _cache_configs_per_s(cfg: Any, cache: Any, per_set: int, rng: np.random.Generator,
                         sizes: tuple[int, ...] | None = None) -> float:
    from search.scoring import ExitSetScorer, threshold_grid

    s = cfg.search
    grid = threshold_grid(s.threshold_min, s.threshold_max, s.threshold_steps)
    P = cache.num_positions
    exit_sets = [c for k in (sizes or range(1, P + 1)) for c in itertools.combinations(range(P), k)]
    total, t = 0, time.perf_counter()
    for exits in exit_sets:
        costs = np.arange(1, len(exits) + 2, dtype=np.float64) * 1e5  # costs only scale a dot product
        scorer = ExitSetScorer(cache, exits, grid, cfg.exits.criterion, costs)
        J = rng.integers(0, len(grid), (per_set, len(exits)))
        scorer.score(J)
        total += per_set
    return total / (time.perf_counter() - t)


def run(args: Any) -> None:
    quick = bool(getattr(args, "quick", False))
    cfg, (model, val), cache = _setup(quick)
    rng = np.random.default_rng(0)
    P = cache.num_positions
    exits = tuple(range(P))
    thresholds = np.full(P, 0.8)
    per_config_s = _network_per_config(cfg, model, val, exits, thresholds, repeats=2 if quick else 3)
    rates = [_cache_configs_per_s(cfg, cache, 20_000 if quick else 100_000, rng) for _ in range(2 if quick else 3)]
    cached = float(np.median(rates))
    every_exit = _cache_configs_per_s(cfg, cache, 20_000 if quick else 100_000, rng, sizes=(P,))
    print(f"# {cache.num_samples} validation images, {P} candidate exits, grid of {cfg.search.threshold_steps}; "
          f"network {per_config_s * 1e3:.1f} ms per configuration; cache {cached:.3g} configs/s over every "
          f"non-empty exit set, {every_exit:.3g} with all {P} exits selected", flush=True)
    bench_line("search_cache_configs_per_s", cached, "configs/s", ">=", 100000)
    bench_line("search_cache_speedup", cached * per_config_s, "x", ">=", 100)
