"""``python -m bench [name ...]``: run every benchmark module (or the named ones).

Each figure is one line ``BENCH <name> <value> <unit> goal <op> <target>``, measured against
a baseline taken in the same run, so results compare across machines and over time.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path


def benchmark_names() -> list[str]:
    """Every module of this folder whose name does not start with ``_`` (those hold shared helpers)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    names = args.names or benchmark_names()
    failed = 0
    for name in names:
        print(f"# bench {name}", flush=True)
        try:
            importlib.import_module(f"bench.{name}").run(args)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
