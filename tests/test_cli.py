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
