"""The benchmarks' timing helper (warm-up rounds are not timed, each step's fastest time is returned) and
which modules ``python -m bench`` runs."""
import importlib

from bench import fastest_interleaved
from bench.__main__ import benchmark_names


def test_fastest_interleaved_times_steps_in_turn_after_warmup_and_keeps_each_ones_fastest() -> None:
    calls: list[str] = []
    seconds = {"a": iter([9.0, 0.5, 3.0, 2.0]), "b": iter([0.1, 7.0, 4.0, 6.0])}  # warm-up first: 9.0 / 0.1 untimed

    def step(key: str) -> float:
        calls.append(key)
        return next(seconds[key])

    fastest = fastest_interleaved({"a": lambda: step("a"), "b": lambda: step("b")}, warmup=1, repeats=3)
    assert fastest == {"a": 0.5, "b": 4.0}
    assert calls == ["a", "b"] * 4  # in turn, so a load spike from elsewhere hits both alike


def test_python_m_bench_runs_every_benchmark_module_and_no_helper_module() -> None:
    names = benchmark_names()
    assert {"memory_format", "cpu_precision", "data_pipeline"} <= set(names)
    assert not any(n.startswith("_") for n in names)  # bench/_hand_step.py and the like hold helpers, no run()
    assert all(callable(getattr(importlib.import_module(f"bench.{n}"), "run", None)) for n in names)
