"""A run folder read back for the report: config, supernet metrics and wall time, search outputs,
exports and static baselines, and the overrides that repeat its commands."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eval.formatting import override
from nachos.config import Config, get_dotted


Record = dict[str, Any]


def read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems.append(f"`{path}` is unreadable ({type(err).__name__}); left out")
        return None


@dataclass
class Export:
    id: str
    folder: Path
    manifest: dict[str, Any]
    eval: dict[str, Any] | None

    @property
    def finetuned(self) -> bool:
        return "finetune" in self.manifest

    @property
    def training(self) -> str:
        """How its weights came about: 'supernet' (inherited), 'inherited' (fine-tuned from them),
        'scratch' (retrained), 'static' (exits on a frozen static backbone), 'static+joint' (then
        fine-tuned together)."""
        ft = self.manifest.get("finetune")
        if ft is None:
            return "supernet"
        init = ft.get("init", "inherited")
        return "static+joint" if init == "inherited" and ft.get("parent_init") == "static" else init

    @property
    def control(self) -> bool:
        """Fine-tuned with the exits' loss off (``export.finetune_exit_weight=0``): its final classifier
        is its backbone trained further without exits, a static rival, and its exits are stale."""
        return self.finetuned and self.manifest["finetune"].get("exit_weight", 1.0) == 0.0

    @property
    def candidate(self) -> tuple[Any, Any]:
        src = self.manifest.get("source", {})
        return src.get("algorithm"), src.get("candidate_id")


@dataclass
class RunData:
    name: str
    dir: Path
    cfg: Config
    has_config: bool
    config_dict: dict[str, Any]
    metrics: dict[str, Any] | None = None
    pareto: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    candidates: list[Record] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _table: Any = None

    @property
    def front(self) -> list[Record]:
        return list((self.pareto or {}).get("front") or [])

    @property
    def cost_key(self) -> str:
        return (self.pareto or {}).get("cost_key", "expected_macs")

    @property
    def dataset(self) -> str:
        return self.cfg.data.name

    def export_of(self, rec: Record) -> Export | None:
        for e in self.exports:
            if not e.finetuned and e.candidate == (rec.get("algorithm"), rec.get("id")):
                return e
        return None

    def table(self) -> Any:
        """The run's MAC table (``macs.json``, or entries measured now)."""
        if self._table is None:
            from eval.baselines import mac_table
            self._table = mac_table(self.cfg)[0]
        return self._table


def load_run(cfg: Config, run_dir: Path) -> RunData:
    import yaml

    from eval.baselines import run_config
    from search.report import read_candidates

    problems: list[str] = []
    has_config = (run_dir / "config.yaml").is_file()
    rcfg = run_config(cfg, run_dir)
    config_dict = yaml.safe_load((run_dir / "config.yaml").read_text()) if has_config else {}
    run = RunData(run_dir.name, run_dir, rcfg, has_config, config_dict or {}, problems=problems)
    run.metrics = read_json(run_dir / "metrics.json", problems)
    search = run_dir / "search"
    run.pareto = read_json(search / "pareto.json", problems)
    run.summary = read_json(search / "summary.json", problems)
    run.history = read_json(search / "history.json", problems)
    if (search / "candidates.jsonl").is_file():
        try:
            run.candidates = read_candidates(search / "candidates.jsonl")
        except (OSError, ValueError) as err:
            problems.append(f"`{search / 'candidates.jsonl'}` is unreadable ({type(err).__name__}); left out")
    for folder in sorted((run_dir / "export").glob("*/")):
        manifest = read_json(folder / "arch.json", problems)
        if isinstance(manifest, dict):
            run.exports.append(Export(folder.name, folder, manifest, read_json(folder / "eval.json", problems)))
    for path in sorted((run_dir / "baselines").glob("*.json")):
        data = read_json(path, problems)
        if isinstance(data, dict) and "test_accuracy" in data:
            run.baselines.append(data)
    run.baselines += [b for e in run.exports if e.control and e.eval for b in [no_exit_control(run, e)] if b]
    return run


def from_scratch(run: RunData) -> list[dict[str, Any]]:
    """The static baselines trained from scratch (``nachos baseline``), without no-exit controls."""
    return [b for b in run.baselines if b.get("origin", {}).get("kind") != "no-exit control"]


def baseline_seed(run: RunData, b: dict[str, Any]) -> Any:
    """The seed static network ``b`` was trained with (a copy from another run keeps that run's recipe)."""
    return (b.get("recipe") or {}).get("seed", run.cfg.seed)


def copied_from(run: RunData, b: dict[str, Any]) -> str | None:
    """The run that trained baseline ``b`` when its file was copied into ``run`` from there, else None."""
    return b["run"] if b.get("run") not in (None, run.name) else None


def from_note(run: RunData, b: dict[str, Any]) -> str:
    src = copied_from(run, b)
    return f" (from `{src}`)" if src else ""


def static_under(run: RunData, e: Export) -> dict[str, Any] | None:
    """The static baseline whose frozen backbone carries ``e``'s exits: its own (``export.finetune_init=
    static``) or, for a fine-tune of such an export, its parent's; None when there is none or it is
    not among the run's baselines."""
    ft = e.manifest.get("finetune") or {}
    holder = e if e.training == "static" else next((x for x in run.exports if x.id == ft.get("parent")), None)
    tag = ((holder.manifest.get("finetune") or {}).get("static_baseline") or {}).get("tag") if holder else None
    return next((b for b in run.baselines if tag is not None and b.get("tag") == tag), None)


def no_exit_control(run: RunData, e: Export) -> dict[str, Any] | None:
    """A no-exit control export (``Export.control``) as a static baseline: its final classifier on
    every test image, at its backbone's MACs, trained for the epochs of the static network under it
    plus its own; None (noted in ``run.problems``) when that lineage cannot be traced, and None
    (not a rival: its epochs build on the supernet's) when it was tuned from a supernet export."""
    ft = e.manifest["finetune"]
    parent = next((x for x in run.exports if x.id == ft.get("parent")), None)
    if parent is not None and parent.training == "supernet" and e.training == "inherited":
        return None  # a subnet tuned briefly from the supernet's weights (a probe): the fine-tuning table has it
    # trained from scratch it owes nothing to another network; else to the static network under its parent
    static = {"epochs": 0, "tag": None} if ft.get("init") == "scratch" else static_under(run, e)
    if static is None or not e.eval.get("exit_accuracy_all_samples"):
        run.problems.append(f"no-exit control `{e.id}`: the static network under it is not among the run's baselines "
                            "(it needs a parent trained with export.finetune_init=static, or to be trained from "
                            "scratch), or it lacks per-exit test figures; left out")
        return None
    from supernet.space import Arch

    arch = Arch.from_dict(e.manifest["arch"])
    epochs = int(static["epochs"]) + int(ft["epochs"])
    return {"tag": e.id, "short": f"static {epochs} ep", "arch": e.manifest["arch"], "arch_key": arch.key(),
            "arch_str": e.manifest.get("arch_str", str(arch)),
            "origin": {"kind": "no-exit control", "export": e.id, "static": static["tag"]}, "exits": [],
            "epochs": epochs, "test_accuracy": float(e.eval["exit_accuracy_all_samples"][-1]),
            "val_accuracy": ft["val_after"]["final_classifier_accuracy"],
            "macs": float(e.manifest["macs"]["backbone"]), "params": int(run.table().params(arch, [])),
            "train_seconds": (static.get("train_seconds") or 0.0) + ft.get("train_seconds", 0.0),
            "device": static.get("device")}


def supernet_wall_time(run_dir: Path, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Training wall time of the supernet: recorded in metrics.json when the trainer writes it,
    else from the W&B history (``_runtime`` of each session of the supernet job), else the
    file times of config.yaml (written at the start) and metrics.json / last.pt (at the end)."""
    for key in ("seconds", "wall_seconds", "train_seconds"):
        if metrics and isinstance(metrics.get(key), (int, float)):
            return {"seconds": float(metrics[key]), "source": f"metrics.json `{key}`"}
    id_file = run_dir / ".wandb-supernet-id"
    if id_file.is_file():
        from nachos.tracking import read_offline_history

        run_id = id_file.read_text().strip()
        sessions = []
        for folder in sorted((run_dir / "wandb").glob(f"*run-*-{run_id}")):
            try:
                rows = read_offline_history(folder)
            except (FileNotFoundError, ValueError, OSError, ImportError):
                continue
            rt = [(r["_timestamp"], r["_runtime"]) for r in rows if "_runtime" in r and "_timestamp" in r]
            if rt:
                sessions.append((min(t for t, _ in rt), min(r for _, r in rt), max(r for _, r in rt)))
        if sessions:
            total, previous = 0.0, 0.0
            for _, first, last in sorted(sessions):
                # a resumed W&B run may continue _runtime from the previous session or restart it
                total += last - previous if first >= previous else last
                previous = last
            return {"seconds": total, "source": f"W&B history `_runtime`, {len(sessions)} session(s), up to the "
                                                "last logged step"}
    start = run_dir / "config.yaml"
    end = next((p for p in (run_dir / "metrics.json", run_dir / "last.pt") if p.is_file()), None)
    if start.is_file() and end is not None and end.stat().st_mtime > start.stat().st_mtime:
        return {"seconds": end.stat().st_mtime - start.stat().st_mtime,
                "source": f"file times of config.yaml and {end.name}, approximate: a resume rewrites config.yaml"}
    return {"seconds": None, "source": "not recorded"}


def search_overrides(run_dir: Path, config_dict: dict[str, Any]) -> list[str]:
    """``search.key=value`` for each search setting the search ran with (``search/config.yaml``)
    that differs from the run's saved config, so the listed command repeats that search."""
    path = run_dir / "search" / "config.yaml"
    if not path.is_file():
        return []
    ran = (yaml.safe_load(path.read_text()) or {}).get("search") or {}
    saved = config_dict.get("search") or {}
    return [override(f"search.{k}", v) for k, v in sorted(ran.items()) if saved.get(k) != v]


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: YAML reads ``8.1e6`` as a string that the config turns into a float."""
    if a == b:
        return True
    try:
        return not isinstance(a, (bool, list, dict)) and not isinstance(b, (bool, list, dict)) and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def pinned_overrides(config_dict: dict[str, Any]) -> list[str]:
    """``key=value`` for each key that some device profile of the saved config would set to
    another value than the run's: loading the saved (already resolved) config applies the
    profile of whatever device loads it, which these pins undo, on any device."""
    profiles = [p for p in (config_dict.get("profiles") or {}).values() if isinstance(p, dict)]
    out = []
    for key in sorted({k for prof in profiles for k in prof}):
        node = get_dotted(config_dict, key)
        if node is not None and any(key in prof and not _same(prof[key], node) for prof in profiles):
            out.append(override(key, node))
    return out
