"""Calibrated MAC table: lookup speed against ptflops, and its error, on the same subnets.

Random (arch, exit set) pairs of the default CIFAR-10 space are extracted from the supernet.
ptflops counts each one the way a table-less search would (every segment and selected head,
cumulated into the cost of leaving at each exit: ``profile_exit_costs``), extraction not timed.
The table answers ``exit_costs`` for the same pairs, none of them looked up before (no per-arch
cache hit), after 500 other random archs have warmed its per-gene block memo as any search
does within its first generation; the first-use rate of a fresh table is printed too. The
table itself is built once beforehand (timed apart). The
error is the largest absolute difference over every exit prefix and every whole network (a
ptflops count of the whole extracted network at once), which must be exactly 0.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from bench import bench_line, one_thread
from nachos.config import load_config
from supernet.costs import MacTable, count_macs, profile_exit_costs, random_exit_set
from supernet.network import create_supernet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml"


@one_thread()  # batch-1 counting of tiny modules only loses to intra-op threads
def run(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    samples = 20 if quick else 200
    cfg = load_config(CONFIG, device_type="cpu")
    torch.manual_seed(0)
    supernet = create_supernet(cfg).eval()
    space = supernet.space
    start = time.perf_counter()
    built = MacTable.build(space, cfg.exits, progress=False)
    print(f"table: {len(built)} entries built in {time.perf_counter() - start:.1f} s", flush=True)

    rng = random.Random(0)
    pairs = [(a := space.sample(rng), random_exit_set(space, a, rng)) for _ in range(samples)]
    count_s, err = 0.0, 0.0
    counted = []
    for arch, ids in pairs:
        net = supernet.extract(arch, ids).eval()
        start = time.perf_counter()
        costs = profile_exit_costs(net)
        count_s += time.perf_counter() - start
        counted.append(costs)
        whole = count_macs(net, net.segment_input_shapes[0])
        err = max(err, abs(whole - built.peak_cost(arch, ids)))

    table = MacTable(space, cfg.exits, entries=built.entries)  # fresh: nothing memoised yet
    start = time.perf_counter()
    looked = [table.exit_costs(arch, ids) for arch, ids in pairs]
    first_s = time.perf_counter() - start
    # steady state of a search: block entries memoised by genes, but every arch new to the table
    table = MacTable(space, cfg.exits, entries=built.entries)
    for _ in range(500):
        a = space.sample(rng)
        table.exit_costs(a, random_exit_set(space, a, rng))
    start = time.perf_counter()
    for arch, ids in pairs:
        table.exit_costs(arch, ids)
    lookup_s = time.perf_counter() - start
    start = time.perf_counter()
    for arch, ids in pairs:
        table.exit_costs(arch, ids)
    warm_s = time.perf_counter() - start
    err = max(err, max(float(np.abs(a - b).max()) for a, b in zip(looked, counted)))
    print(f"{samples} subnets: ptflops {samples / count_s:.1f} counts/s; table lookups of new archs "
          f"{samples / lookup_s:,.0f}/s ({samples / first_s:,.0f}/s on a fresh table, {samples / warm_s:,.0f}/s "
          "for archs already looked up)", flush=True)
    bench_line("mac_table_lookup_speedup", count_s / lookup_s, "x", ">=", 1000)
    bench_line("mac_table_max_abs_error", err, "MACs", "<=", 0)
