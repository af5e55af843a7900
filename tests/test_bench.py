"""The benchmarks' timing helper: warm-up rounds are not timed, and each step's fastest time is returned."""
from bench import fastest_interleaved


def test_fastest_interleaved_times_steps_in_turn_after_warmup_and_keeps_each_ones_fastest() -> None:
    calls: list[str] = []
    seconds = {"a": iter([9.0, 0.5, 3.0, 2.0]), "b": iter([0.1, 7.0, 4.0, 6.0])}  # warm-up first: 9.0 / 0.1 untimed

    def step(key: str) -> float:
        calls.append(key)
        return next(seconds[key])

    fastest = fastest_interleaved({"a": lambda: step("a"), "b": lambda: step("b")}, warmup=1, repeats=3)
    assert fastest == {"a": 0.5, "b": 4.0}
    assert calls == ["a", "b"] * 4  # in turn, so a load spike from elsewhere hits both alike
