"""Benchmarks: each module in this folder defines ``run(args) -> None`` printing BENCH lines."""
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import torch


def bench_line(name: str, value: float, unit: str, op: str, target: float) -> str:
    """Print one figure as ``BENCH <name> <value> <unit> goal <op> <target>``."""
    line = f"BENCH {name} {value:.4g} {unit} goal {op} {target:g}"
    print(line, flush=True)
    return line


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread inside: with two, OpenMP workers waiting on each other while other
    processes hold the cores made step times swing 3x between runs; ratios are what is measured."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fastest_interleaved(steps: dict[Hashable, Callable[[], float]], warmup: int, repeats: int) -> dict[Hashable, float]:
    """Fastest time each of ``steps`` (callables returning their own seconds) takes, run in turn
    after ``warmup`` untimed rounds: interleaved, so load from other processes hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[Hashable, list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            times[key].append(step())
    return {key: min(t) for key, t in times.items()}
