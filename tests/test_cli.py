"""The command line: positional arguments bind by name; export stages take several folders."""
from __future__ import annotations

import pytest

from nachos.cli import COMMANDS, bind_positionals, main


def test_export_stages_take_any_number_of_folders() -> None:
    for name in ("eval", "finetune", "baseline"):
        assert bind_positionals(COMMANDS[name], []) == {"export_dirs": []}
        assert bind_positionals(COMMANDS[name], ["a", "b", "c"]) == {"export_dirs": ["a", "b", "c"]}


def test_fixed_positionals_default_to_none_and_refuse_extras(capsys: pytest.CaptureFixture) -> None:
    assert bind_positionals(COMMANDS["macs"], []) == {"action": None}
    assert bind_positionals(COMMANDS["macs"], ["verify"]) == {"action": "verify"}
    with pytest.raises(ValueError, match=r"unexpected argument\(s\) \['extra'\]"):
        bind_positionals(COMMANDS["macs"], ["verify", "extra"])
    with pytest.raises(SystemExit):  # the command line says so and names the stray argument
        main(["supernet", "--config", "configs/tiny.yaml", "stray", "wandb.mode=disabled"])
    assert "unexpected argument(s) ['stray']" in capsys.readouterr().err


def test_several_export_folders_resolve_in_order_each_once() -> None:
    from pathlib import Path

    from eval.evaluate import each_export_dir

    found = {"run": [Path("r/1"), Path("r/2")], "a": [Path("r/2"), Path("r/3")], "b": [Path("r/3"), Path("r/1")]}
    resolve = lambda d: found["run" if d is None else d]  # noqa: E731
    assert each_export_dir(None, resolve) == each_export_dir([], resolve) == [Path("r/1"), Path("r/2")]
    assert each_export_dir(["a", "b"], resolve) == [Path("r/2"), Path("r/3"), Path("r/1")]


def test_every_command_resolves_and_a_renamed_function_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from nachos import cli

    for name, cmd in COMMANDS.items():
        assert callable(cli._resolve(cmd.target)), name
    # a target whose function was renamed away must raise, not pass for a stage still to be written
    gone = dataclasses.replace(COMMANDS["data"], target="nachos.data:renamed_away")
    monkeypatch.setitem(COMMANDS, "data", gone)
    with pytest.raises(AttributeError, match="renamed_away"):
        main(["data", "--config", "configs/tiny.yaml", "wandb.mode=disabled"])
    monkeypatch.setitem(COMMANDS, "data", dataclasses.replace(gone, target="nachos.moved_away:prepare_command"))
    with pytest.raises(ModuleNotFoundError, match="moved_away"):
        main(["data", "--config", "configs/tiny.yaml", "wandb.mode=disabled"])
