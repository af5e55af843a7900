"""``nachos search``: constrained NSGA-II over (backbone, exit set, thresholds), scored from
inherited weights, with an optional random-search baseline on the same evaluation budget.

    nachos search --config configs/cifar10.yaml [--resume] [search.random_baseline=true]

Everything lands in ``<run_dir>/search/`` (see ``search.report``); ``state.pkl`` is rewritten
atomically after every generation, so ``--resume`` continues a killed search exactly.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nachos.config import Config, save_config
from nachos.runtime import RunError, atomic_write_bytes, atomic_write_text, ensure_dir
from nachos.tracking import Tracker
from search.evaluate import Backend, CandidateEvaluator
from search.front import HvReference, closest, explain_infeasible, hypervolume, pareto_front
from search.genome import GenomeCodec
from search.nsga import Phase, run_nsga2, run_random
from search.report import front_table, plot_front, write_candidates, write_front
from supernet.space import SearchSpace

STATE_VERSION = 1
INFEASIBLE_EXIT = 3
Record = dict[str, Any]


@dataclass
class SearchResult:
    search_dir: Path
    algorithm: str
    front: list[Record]
    hypervolume: float
    hypervolume_random: float | None
    n_candidates: int
    n_feasible: int
    backbones: int
    message: str
    exit_code: int
    summary: dict[str, Any]


def _check_settings(cfg: Config) -> None:
    s = cfg.search
    if s.min_accuracy >= 1.0:  # the hypervolume's reference error, 1 - min_accuracy, would be 0
        raise RunError(f"search.min_accuracy={s.min_accuracy} admits only perfect subnets; give a value below 1 "
                       "(NACHOS's: 0.65)")


def _run_fingerprint(cfg: Config, space: SearchSpace, scores_id: str | None) -> dict[str, Any]:
    # settings that change which genomes a run visits or how they score (a supernet trained on, say,
    # since the search began); random_baseline may be switched on for a resume
    search = {k: v for k, v in dataclasses.asdict(cfg.search).items() if k != "random_baseline"}
    return {"search": search, "seed": cfg.seed, "space": space.space_hash(), "criterion": cfg.exits.criterion,
            "exits": dataclasses.asdict(cfg.exits), "scores": scores_id}


class StateFile:
    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path, self.fingerprint = path, fingerprint

    def load(self) -> dict[str, Phase]:
        if not self.path.is_file():
            raise RunError(f"nothing to resume: no search state at {self.path}; run without --resume")
        try:
            state = pickle.loads(self.path.read_bytes())
        except Exception as err:
            raise RunError(f"cannot read search state {self.path} ({type(err).__name__}); "
                           "run without --resume") from None
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != self.fingerprint:
            raise RunError(f"the search in {self.path.parent} was started with other settings or another supernet "
                           "checkpoint or device; resume with the same config, overrides, checkpoint and device, or "
                           "start a new one without --resume (or with another name=...)")
        return {name: Phase.from_state(p) for name, p in state["phases"].items()}

    def save(self, phases: dict[str, Phase]) -> None:
        blob = pickle.dumps({"version": STATE_VERSION, "fingerprint": self.fingerprint,
                             "phases": {n: p.to_state() for n, p in phases.items()}})
        atomic_write_bytes(self.path, blob)


def _hv_reference(cfg: Config, evaluator: CandidateEvaluator, space: SearchSpace) -> HvReference:
    s = cfg.search
    err = 1.0 - s.min_accuracy if s.min_accuracy > 0 else 1.0
    if s.metric == "macs" and s.max_expected_macs > 0:
        return HvReference(err, s.max_expected_macs)
    largest = space.largest()
    macs, lat, _ = evaluator.costs(largest, tuple(space.available_exits(largest)))
    return HvReference(err, float((lat if s.metric == "latency" and lat is not None else macs)[-1]))


class Runner:
    """One search: phases, per-generation bookkeeping and the final outputs."""

    def __init__(self, cfg: Config, backend: Backend, resume: bool, tracker: Tracker) -> None:
        _check_settings(cfg)
        self.cfg, self.backend, self.tracker = cfg, backend, tracker
        self.space = SearchSpace.from_config(cfg.space)
        self.codec = GenomeCodec(self.space, cfg.search.threshold_steps)
        self.evaluator = CandidateEvaluator(self.codec, backend, cfg.search, cfg.exits.criterion)
        self.cost_key = "expected_latency" if cfg.search.metric == "latency" else "expected_macs"
        self.dir = ensure_dir(cfg.run_dir / "search")
        self.state = StateFile(self.dir / "state.pkl",
                               _run_fingerprint(cfg, self.space, getattr(backend, "scores_id", None)))
        self.phases: dict[str, Phase] = self.state.load() if resume else {}
        self.ref = _hv_reference(cfg, self.evaluator, self.space)
        self._bar: tqdm | None = None
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ generations
    def on_generation(self, phase: Phase, generation: int) -> None:
        recs = phase.archive.records
        feasible = [r for r in recs if r["feasible"]]
        front = pareto_front(feasible, self.cost_key)
        hv = hypervolume(front, self.ref, self.cost_key)
        backbones = len({r["arch_key"] for r in recs if r["scored"]})
        phase.history.append({"generation": generation, "n_eval": phase.n_eval, "candidates": len(recs),
                              "feasible": len(feasible), "backbones": backbones, "hypervolume": hv,
                              "front": [[r["accuracy"], r[self.cost_key]] for r in front]})
        self.phases[phase.algorithm] = phase
        self.state.save(self.phases)
        self._write_progress()
        algo = phase.algorithm
        # one W&B step per generation of any phase, counted from the saved histories (resume-safe)
        step = sum(len(p.history) for p in self.phases.values())
        self.tracker.log({f"search/{algo}/hypervolume": hv, f"search/{algo}/feasible": len(feasible),
                          f"search/{algo}/candidates": len(recs), f"search/{algo}/backbones": backbones,
                          f"search/{algo}/generation": generation, f"search/{algo}/n_eval": phase.n_eval}, step=step)
        self.tracker.log_table(f"search/{algo}/front", ["generation", "accuracy", self.cost_key, "exits", "arch"],
                               [[generation, r["accuracy"], r[self.cost_key], str(r["exits"]), r["arch_str"]]
                                for r in front], step=step)
        best = f'{max(r["accuracy"] for r in feasible):.4f}' if feasible else "-"
        if self._bar is not None and not self._bar.disable:
            self._bar.update(1)
            self._bar.set_postfix(hv=f"{hv:.4f}", feasible=len(feasible), best=best, backbones=backbones)
        else:  # logs and pipes get one line per generation
            print(f"search {algo} generation {generation}: {phase.n_eval} evaluated, {len(recs)} candidates, "
                  f"{len(feasible)} admissible (best {best}), {backbones} backbones, hypervolume {hv:.4f}, "
                  f"{time.perf_counter() - self._t0:.0f} s", file=sys.stderr, flush=True)

    def _shown(self) -> dict[str, Phase]:
        """The phases the outputs hold: the main algorithm's, and the random baseline's while it is
        on (a random phase left by a run resumed with it off is a search cut short: no baseline)."""
        s = self.cfg.search
        return {name: p for name, p in self.phases.items() if name == s.algorithm or s.random_baseline}

    def _write_progress(self) -> None:
        shown = self._shown()
        records = [r for p in shown.values() for r in p.archive.records]
        write_candidates(self.dir / "candidates.jsonl", records)
        history = {name: {"reference_point": self.ref.to_dict(), "generations": p.history}
                   for name, p in shown.items()}
        atomic_write_text(self.dir / "history.json", json.dumps(history, indent=1))

    def _phase(self, name: str, total: int, run: Any) -> Phase:
        done = len(self.phases[name].history) if name in self.phases else 0
        with tqdm(total=total, initial=done, desc=f"search {name}", unit="gen", file=sys.stderr,
                  disable=not sys.stderr.isatty()) as bar:
            self._bar = bar
            phase = run(self.phases.get(name))
            self._bar = None
        self.phases[name] = phase
        return phase

    # ------------------------------------------------------------------ run
    def run(self) -> SearchResult:
        s = self.cfg.search
        seed = self.cfg.seed if s.seed < 0 else s.seed
        main = s.algorithm
        if main == "nsga2":
            nsga = self._phase("nsga2", s.generations, lambda p: run_nsga2(
                self.codec, self.evaluator, s, seed, p, self.on_generation))
            budget = nsga.n_eval
        else:
            budget = s.population * s.generations
        if main == "random" or s.random_baseline:
            gens = -(-budget // s.population)
            self._phase("random", gens, lambda p: run_random(
                self.codec, self.evaluator, s, seed, budget, p, self.on_generation))
        self.state.save(self.phases)
        self._write_progress()
        return self.finish(main)

    def finish(self, main: str) -> SearchResult:
        cons = self.evaluator.constraints
        recs = self.phases[main].archive.records
        feasible = [r for r in recs if r["feasible"]]
        front = pareto_front(feasible, self.cost_key)
        hv = hypervolume(front, self.ref, self.cost_key)
        hv_random = None
        shown = self._shown()
        if main != "random" and "random" in shown:
            rf = [r for r in shown["random"].archive.records if r["feasible"]]
            hv_random = hypervolume(pareto_front(rf, self.cost_key), self.ref, self.cost_key)
        message, code, near = "", 0, []
        if not front:
            message, code = explain_infeasible(recs, cons), INFEASIBLE_EXIT
            near = closest(recs)
        seconds = getattr(getattr(self.backend, "timer", None), "seconds", [])
        summary = {
            "algorithm": main, "metric": self.cfg.search.metric, "constraints": cons.describe(),
            "candidates": len(recs), "feasible": len(feasible), "front_size": len(front),
            "backbones": len({r["arch_key"] for r in recs if r["scored"]}), "hypervolume": hv,
            "hypervolume_random": hv_random,
            "hypervolume_ratio_vs_random": (hv / hv_random) if hv_random else None,
            "best_accuracy": max((r["accuracy"] for r in feasible), default=None),
            "reference_point": self.ref.to_dict(),
            "backbones_computed_this_run": len(seconds),
            "seconds_per_backbone": (sum(seconds) / len(seconds)) if seconds else None,
            "seconds": time.perf_counter() - self._t0, "message": message,
        }
        write_front(self.dir, {"algorithm": main, "metric": self.cfg.search.metric, "cost_key": self.cost_key,
                               "constraints": dataclasses.asdict(cons), "reference_point": self.ref.to_dict(),
                               "hypervolume": hv, "front": front, "message": message, "closest": near})
        archives = {name: p.archive.records for name, p in shown.items()}
        title = f"{self.cfg.name}: {len(recs)} candidates, {len(front)} admissible on the front, HV {hv:.4f}"
        png = plot_front(self.dir / "pareto.png", archives, front, cons, self.cost_key, self.cfg.data.name, title)
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=1))
        save_config(self.cfg, self.dir / "config.yaml")  # the search's own overrides, for the report
        step = sum(len(p.history) for p in self.phases.values()) + 1
        self.tracker.log_table("search/admissible", *front_table(front), step=step)
        self.tracker.log_image("search/pareto", png, step=step)
        self.tracker.summary({f"search/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        return SearchResult(self.dir, main, front, hv, hv_random, len(recs), len(feasible), summary["backbones"],
                            message, code, summary)


def run_search(cfg: Config, resume: bool = False, *, backend: Backend | None = None,
               config_path: str | None = None, track: bool = True) -> SearchResult:
    """Run (or resume) the search of ``cfg``; ``backend`` defaults to the trained supernet."""
    if backend is None:
        from search.backend import SupernetBackend
        backend = SupernetBackend(cfg, config_path)
    tracker = Tracker(cfg, cfg.run_dir, "search", enabled=track, resume=resume)
    try:
        return Runner(cfg, backend, resume, tracker).run()
    finally:
        tracker.finish()


def _print_result(res: SearchResult, cost_key: str) -> None:
    s = res.summary
    print(f"search ({res.algorithm}): {res.n_candidates} candidates, {res.n_feasible} admissible, "
          f"{res.backbones} backbones, {s['seconds']:.0f} s")
    if s.get("seconds_per_backbone"):
        print(f"per-backbone scoring (BN recalibration + validation pass): {s['seconds_per_backbone']:.2f} s "
              f"x {s['backbones_computed_this_run']} computed this run")
    for r in res.front:
        latency = f"  latency {r['expected_latency'] * 1e3:.3f} ms" if cost_key == "expected_latency" else ""
        print(f"  acc {r['accuracy']:.4f}  expected {r['expected_macs'] / 1e6:6.3f} M  "
              f"peak {r['peak_macs'] / 1e6:6.3f} M"
              f"{latency}  exits {r['exits']} thr {r['thresholds']} ({r['threshold_source']})  {r['arch_str']}")
    print(f"hypervolume {res.hypervolume:.4f}" + (
        f"; random search {res.hypervolume_random:.4f} (NSGA-II / random = "
        f"{s['hypervolume_ratio_vs_random']:.3f})" if res.hypervolume_random else
        ("; random search 0 (no admissible candidate)" if res.hypervolume_random == 0 else "")))
    print(f"outputs in {res.search_dir}/")


def search_command(cfg: Config, args: Any) -> int:
    res = run_search(cfg, resume=bool(getattr(args, "resume", False)), config_path=getattr(args, "config", None))
    cost_key = "expected_latency" if cfg.search.metric == "latency" else "expected_macs"
    _print_result(res, cost_key)
    if res.exit_code:
        print(f"error: {res.message}", file=sys.stderr)
        print("closest candidates (results are written all the same):", file=sys.stderr)
        for r in json.loads((res.search_dir / "pareto.json").read_text())["closest"]:
            print(f"  acc {r['accuracy']:.4f}  expected {r['expected_macs'] / 1e6:.3f} M  peak "
                  f"{r['peak_macs'] / 1e6:.3f} M  params {r['params']:,}  violations "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in r["violations"].items()), file=sys.stderr)
    return res.exit_code

