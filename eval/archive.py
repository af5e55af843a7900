"""A run folder's report inputs copied to a folder git keeps (``nachos archive``).

Run folders hold checkpoints and every search cache, so they stay out of git, and a session that
starts on a fresh machine starts without them (sessions 14, 19 and 29 did). The report reads only
small files of them, plus the validation caches of the backbones it analyses; the archive is
those, under the same relative paths, so ``nachos report --config <archive>/<name>/config.yaml
out_dir=<archive>`` writes the same tables and plots from the archive alone.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from eval.run_folder import load_run
from nachos.config import Config
from nachos.runtime import RunError, replace_dir

# What the report reads (eval.run_folder.load_run, eval.report), relative to the run folder.
REPORT_FILES = ("config.yaml", "metrics.json", "supernet_test.json", "macs.json",
                "search/config.yaml", "search/pareto.json", "search/summary.json", "search/history.json",
                "search/candidates.jsonl", "export/*/arch.json", "export/*/eval.json", "baselines/*.json")


def report_inputs(cfg: Config, run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` the report reads: REPORT_FILES, and the search caches of the front's
    and the static baselines' backbones (the savings and inherited-accuracy analyses), relative."""
    from supernet.space import Arch

    found = {p for pattern in REPORT_FILES for p in run_dir.glob(pattern) if p.is_file()}
    run = load_run(cfg, run_dir)
    archs = [r["arch"] for r in run.front] + [b["arch"] for b in run.baselines if "arch" in b]
    for arch in archs:
        path = run_dir / "search" / "cache" / f"{Arch.from_dict(arch).key()}.npz"
        if path.is_file():
            found.add(path)
    return sorted(p.relative_to(run_dir) for p in found)


def archive_run(cfg: Config, run_dir: Path, dest: Path) -> list[Path]:
    """Copy ``run_dir``'s report inputs to ``dest`` (same relative paths; what ``dest`` held before
    is replaced, so a file the run no longer has does not linger); returns the copies."""
    files = report_inputs(cfg, run_dir)
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for rel in files:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, staging / rel)
    # say what goes: a run folder that lost files (a fresh machine) would otherwise empty its archive
    # without a word (git still has them)
    dropped = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) if dest.is_dir() else []
    dropped = [rel for rel in dropped if rel not in set(files)]
    if dropped:
        print(f"{dest}: dropped {len(dropped)} archived file(s) that {run_dir} no longer has: "
              + ", ".join(str(rel) for rel in dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    replace_dir(staging, dest)  # swapped in whole: an interrupted archive leaves a complete one
    return [dest / rel for rel in files]


def archive_command(cfg: Config, args: object) -> int:
    from eval.report import report_runs

    root = Path(cfg.export.archive_dir)
    if root.resolve() == Path(cfg.out_dir).resolve():
        raise RunError(f"export.archive_dir ({root}) is the run folders' out_dir; archive them elsewhere "
                       "(the default is docs/runs)")
    for name in report_runs(cfg):
        run_dir = Path(cfg.out_dir) / name
        if not (run_dir / "config.yaml").is_file():
            print(f"{name}: not found (no {run_dir / 'config.yaml'}); skipped, as the report says 'not run'")
            continue
        copies = archive_run(cfg, run_dir, root / name)
        size = sum(p.stat().st_size for p in copies)
        print(f"archived {name}: {len(copies)} files, {size / 1e6:.2f} MB in {root / name}")
    print(f"regenerate the report from it: nachos report --config {root / cfg.name / 'config.yaml'} out_dir={root}")
    return 0


__all__ = ["REPORT_FILES", "archive_command", "archive_run", "report_inputs"]
