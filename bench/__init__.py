"""Benchmarks: each module in this folder defines ``run(args) -> None`` printing BENCH lines."""
from collections.abc import Iterator
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
