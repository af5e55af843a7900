"""The ``nachos`` command: one subcommand per stage of the pipeline.

Every subcommand takes ``--config FILE`` and any number of ``key.sub=value`` overrides.
Stage code is imported only when its subcommand runs, so ``nachos --help`` is instant and
this module sits on top of the package layers without creating import cycles.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_CONFIG = "configs/cifar10.yaml"


@dataclass(frozen=True)
class Command:
    target: str  # "module:function", called as function(cfg, args)
    help: str
    positional: tuple[str, ...] = ()  # names of positional (non key=value) arguments
    extra: Callable[[argparse.ArgumentParser], None] | None = None
    variadic: bool = False  # the last positional takes every remaining one, as a list


def bind_positionals(cmd: Command, values: list[str]) -> dict[str, Any]:
    """The positional arguments by name (missing ones None; a variadic last one a list, maybe empty)."""
    fixed = cmd.positional[:-1] if cmd.variadic else cmd.positional
    if not cmd.variadic and len(values) > len(fixed):
        raise ValueError(f"unexpected argument(s) {values[len(fixed):]}; overrides look like key.sub=value")
    bound: dict[str, Any] = {name: (values[i] if i < len(values) else None) for i, name in enumerate(fixed)}
    if cmd.variadic:
        bound[cmd.positional[-1]] = values[len(fixed):]
    return bound


def _macs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=("macs", "latency"), default="macs", help="what the table holds")
    p.add_argument("--samples", type=int, default=20, help="verify: random (arch, exit set) pairs to check")


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--supernet", action="store_true",
                   help="evaluate the supernet's largest and smallest subnets instead of exports")


def _space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help="also count the MACs and parameters of this network, written as reports print it "
                        "('w16[k3e1] w24[k3e2,k3e2] ... f128'); repeatable")


COMMANDS: dict[str, Command] = {
    "data": Command("nachos.data:prepare_command", "decode the dataset into the tensor cache and print its splits"),
    "space": Command("supernet.summary:space_command", "summarise the search space of a config",
                     extra=_space_args),
    "macs": Command("supernet.costs:macs_command", "build or verify the calibrated MAC / latency table",
                    positional=("action",), extra=_macs_args),
    "supernet": Command("supernet.train:supernet_command", "train the supernet and its exit heads (sandwich rule)",
                        extra=_resume_args),
    "search": Command("search.run:search_command", "evolutionary search over subnets, exit sets and thresholds",
                      extra=_resume_args),
    "export": Command("eval.export:export_command", "export chosen solutions as standalone early-exit models"),
    "eval": Command("eval.evaluate:eval_command", "evaluate exported models on the test split",
                    positional=("export_dirs",), extra=_eval_args, variadic=True),
    "finetune": Command("eval.finetune:finetune_command", "fine-tune exported models, then re-choose their thresholds",
                        positional=("export_dirs",), variadic=True),
    "baseline": Command("eval.baselines:baseline_command", "train static baselines (no exits) from scratch",
                        positional=("export_dirs",), variadic=True),
    "report": Command("eval.report:report_command", "write docs/RESULTS.md tables and plots from run folders"),
    "archive": Command("eval.archive:archive_command", "copy the report's inputs of each reported run to "
                       "export.archive_dir, which git keeps"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nachos", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
        if cmd.extra:
            cmd.extra(p)
        p.add_argument("rest", nargs="*", metavar="ARG",
                       help=" ".join(f"{a.upper()}" for a in cmd.positional) + (" ..." if cmd.variadic else "")
                       + (" then " if cmd.positional else "")
                       + "overrides as key.sub=value")
    return parser


def _resolve(target: str) -> Callable:
    """The function of a ``module:function`` target; a missing one raises (a renamed function is a bug)."""
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: list[str] | None = None) -> int:
    from nachos.config import ConfigError, load_config
    from nachos.runtime import RunError

    parser = _parser()
    # parse_known_args lets overrides follow options (`macs verify --samples 5 name=x`):
    # argparse stops the positional list at the first option and leaves the rest over.
    args, leftover = parser.parse_known_args(argv)
    unknown = [a for a in leftover if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.command:
        parser.print_help()
        return 2
    cmd = COMMANDS[args.command]
    rest = list(getattr(args, "rest", [])) + leftover
    positional = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    try:
        for name, value in bind_positionals(cmd, positional).items():
            setattr(args, name, value)
    except ValueError as err:
        parser.error(str(err))
    try:
        cfg = load_config(args.config, overrides)
        result = _resolve(cmd.target)(cfg, args)
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
