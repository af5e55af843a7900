"""Benchmarks: each module in this folder defines ``run(args) -> None`` printing BENCH lines."""


def bench_line(name: str, value: float, unit: str, op: str, target: float) -> str:
    """Print one figure as ``BENCH <name> <value> <unit> goal <op> <target>``."""
    line = f"BENCH {name} {value:.4g} {unit} goal {op} {target:g}"
    print(line, flush=True)
    return line
