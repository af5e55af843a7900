"""What the report concludes from one run: the ablations (exits on and off, evolved vs refined
thresholds, NSGA-II vs random search, inherited vs from-scratch ranking) and the issue's goals."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.formatting import mmacs, pct, points
from eval.run_folder import Export, Record, RunData, baseline_seed, from_scratch, static_under


GOAL_ACCURACY = 0.85
GOAL_MACS = 2.7e6
GOAL_SAVING = 0.30
GOAL_MAX_LOSS = 0.005
# Exit sets x threshold-grid points scored from one backbone's cache at most (P = 4 exits and an
# 11-point grid need 20,000; block-level exit positions would need billions).
MAX_SCORED_CONFIGS = 2_000_000


def load_cache(run: RunData, arch: Any) -> Any:
    """The search's prediction cache of ``arch`` (validation split), or None."""
    from search.cache import read_cache

    return read_cache(run.dir / "search" / "cache", arch)


def no_exit_record(run: RunData, arch_key: str) -> Record | None:
    """The search's own record of this backbone without early exits (same val split)."""
    for r in run.candidates:
        if r.get("arch_key") == arch_key and not r.get("exits") and r.get("scored", True):
            return r
    return None


def best_savings(cache: Any, arch: Any, run: RunData, tolerances: tuple[float, ...]) -> dict[str, Any]:
    """Over every exit set and threshold of the search's grid, scored from ``cache`` with the
    search's code: per tolerance t, the cheapest configuration with accuracy >= (backbone alone) - t."""
    from search.scoring import ExitSetScorer, threshold_grid
    from supernet.space import SearchSpace

    s = run.cfg.search
    grid = threshold_grid(s.threshold_min, s.threshold_max, s.threshold_steps)
    space = SearchSpace.from_config(run.cfg.space)
    tab = run.table()
    base_acc = float(cache.correct[-1].mean())
    base_cost = float(tab.exit_costs(arch, [])[-1])
    best: dict[float, dict[str, Any] | None] = {t: None for t in tolerances}
    used, skipped = 0, 0
    avail = space.available_exits(arch)
    for r in range(1, len(avail) + 1):
        for exits in itertools.combinations(avail, r):
            n = len(grid) ** r
            if used + n > MAX_SCORED_CONFIGS:
                skipped += 1
                continue
            used += n
            costs = tab.exit_costs(arch, list(exits))
            sc = ExitSetScorer(cache, exits, grid, run.cfg.exits.criterion, costs)
            for block in sc.all_indices():
                sco = sc.score(block)
                for t in tolerances:
                    ok = sco.accuracy >= base_acc - t - 1e-12
                    if not ok.any():
                        continue
                    i = int(np.argmin(np.where(ok, sco.expected_cost, np.inf)))
                    cur = best[t]
                    if cur is None or sco.expected_cost[i] < cur["expected_macs"]:
                        best[t] = {"exits": list(exits), "thresholds": [float(grid[j]) for j in block[i]],
                                   "accuracy": float(sco.accuracy[i]), "expected_macs": float(sco.expected_cost[i]),
                                   "saving": 1.0 - float(sco.expected_cost[i]) / base_cost}
    return {"base_accuracy": base_acc, "base_macs": base_cost, "best": best, "configs": used,
            "exit_sets_skipped": skipped, "images": int(cache.num_samples)}


def exit_ablation_val(run: RunData) -> list[dict[str, Any]]:
    """Per distinct front backbone: the search's front solution with exits vs the backbone alone
    (validation split), plus the best MAC saving at equal-or-better / <= 0.5-point-lower accuracy."""
    from supernet.space import Arch

    rows = []
    seen: set[str] = set()
    for rec in sorted(run.front, key=lambda r: r["expected_macs"]):
        key = rec.get("arch_key") or Arch.from_dict(rec["arch"]).key()
        if key in seen:
            continue
        seen.add(key)
        arch = Arch.from_dict(rec["arch"])
        row: dict[str, Any] = {"rec": rec, "arch": arch, "base": None, "savings": None, "source": "not available"}
        cache = load_cache(run, arch)
        if cache is not None:
            row["savings"] = best_savings(cache, arch, run, (0.0, GOAL_MAX_LOSS))
            row["base"] = {"accuracy": row["savings"]["base_accuracy"], "macs": row["savings"]["base_macs"]}
            row["source"] = "search cache, every exit set x threshold grid"
        else:
            nr = no_exit_record(run, key)
            if nr is not None:
                row["base"] = {"accuracy": nr["accuracy"], "macs": nr["expected_macs"]}
                row["source"] = "search candidates"
                same = [r for r in run.candidates if r.get("arch_key") == key and r.get("exits")
                        and r.get("scored", True)]
                row["savings"] = {"best": {}, "from_candidates": True, "configs": len(same)}
                for t in (0.0, GOAL_MAX_LOSS):
                    ok = [r for r in same if r["accuracy"] >= nr["accuracy"] - t - 1e-12]
                    b = min(ok, key=lambda r: r["expected_macs"]) if ok else None
                    row["savings"]["best"][t] = None if b is None else {
                        "exits": b["exits"], "thresholds": b["thresholds"], "accuracy": b["accuracy"],
                        "expected_macs": b["expected_macs"], "saving": 1.0 - b["expected_macs"] / nr["expected_macs"]}
        rows.append(row)
    return rows


def static_of(run: RunData, arch_key: str | None, own_seed: bool = False) -> dict[str, Any] | None:
    """The like-for-like static network of ``arch_key`` (no exits, trained alone); the most
    accurate when it was trained for several lengths. ``own_seed``: only one the run's seed trained
    (for tables across seeds: a copy of another seed's would have two rows share one draw)."""
    held = [b for b in like_for_like_statics(run, arch_key) if not own_seed or baseline_seed(run, b) == run.cfg.seed]
    return max(held, key=lambda b: b["test_accuracy"]) if held else None


def exit_ablation_test(run: RunData) -> list[dict[str, Any]]:
    """Per evaluated export (test split), at its own thresholds and at its operating point (the
    cheapest thresholds within ``export.max_accuracy_drop`` on validation, see ``eval.evaluate``):
    early exit vs the same backbone without exits. That is its own final classifier on every image
    (same weights) and, when one was trained like for like, the static network of the same arch
    trained alone (the most accurate, when it was trained for several lengths); the loss is taken
    against the better of the two."""
    rows = []
    for e in evaluated(run):
        ev = e.eval
        if not ev.get("exit_accuracy_all_samples"):
            continue
        alone = float(ev["exit_accuracy_all_samples"][-1])
        static = static_of(run, e.manifest.get("arch_key"))
        static_acc = None if static is None else float(static["test_accuracy"])
        ref = alone if static_acc is None else max(alone, static_acc)
        backbone = float(ev.get("backbone_macs") or e.manifest.get("macs", {}).get("backbone"))
        # (label, test point, validation expected MACs when recorded)
        points_ = [("export", ev, (ev.get("validation") or {}).get("expected_macs"))]
        op = ev.get("operating_point")
        if op:
            bound = f" at {op['z']:g} SE" if op.get("z") else ""
            points_.append((f"within {100 * op['max_accuracy_drop']:g} pt on val{bound}", op["test"],
                            (op.get("val") or {}).get("expected_macs")))
        for thresholds, point, val_macs in points_:
            acc, macs = float(point["accuracy"]), float(point["expected_macs"])
            rows.append({"id": e.id, "thresholds": thresholds, "accuracy": acc, "alone": alone, "static": static_acc,
                         "loss": ref - acc, "expected_macs": macs, "backbone_macs": backbone,
                         "saving": 1.0 - macs / backbone, "images": ev.get("images"),
                         "val_saving": None if val_macs is None else 1.0 - float(val_macs) / backbone})
    return rows


def operating_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Goal 3's point among one export's rows: the eval's operating point, the cheapest thresholds
    whose validation accuracy stays within ``export.max_accuracy_drop`` of the final classifier at a
    one-sided confidence bound (``eval.evaluate``), i.e. the point nachos deploys. Its test figures
    judge the goal: the curve point that saves most within the budget on test is flattered by test
    noise, and the one that does so on validation by validation noise."""
    return next((r for r in rows if r["thresholds"].startswith("within ")), None)


def savings_goal_met(row: dict[str, Any]) -> bool:
    return row["saving"] >= GOAL_SAVING and row["loss"] <= GOAL_MAX_LOSS + 1e-12


def threshold_ablation(run: RunData) -> dict[str, Any] | None:
    """Front composition by threshold source and the hypervolume with and without refined records."""
    if not run.pareto or not run.candidates:
        return None
    from search.front import HvReference, hypervolume, pareto_front

    main = run.pareto.get("algorithm", "nsga2")
    ref_d = run.pareto.get("reference_point") or (run.summary or {}).get("reference_point")
    if not ref_d:
        return None
    ref = HvReference(float(ref_d["error"]), float(ref_d["cost"]))
    recs = [r for r in run.candidates if r.get("algorithm", main) == main and r.get("feasible")]
    plain = [r for r in recs if r.get("threshold_source") != "refined"]
    counts: dict[str, int] = {}
    for r in run.front:
        counts[r.get("threshold_source", "?")] = counts.get(r.get("threshold_source", "?"), 0) + 1
    return {"algorithm": main, "front_sources": counts,
            "hv_all": hypervolume(pareto_front(recs, run.cost_key), ref, run.cost_key),
            "hv_without_refined": hypervolume(pareto_front(plain, run.cost_key), ref, run.cost_key),
            "refined_records": len(recs) - len(plain), "records": len(recs)}


def algorithm_ablation(run: RunData) -> dict[str, Any] | None:
    """Final hypervolume and evaluations of each algorithm in history.json."""
    if not run.history:
        return None
    out = {}
    for name, h in run.history.items():
        gens = h.get("generations") or []
        if gens:
            out[name] = {"hypervolume": float(gens[-1]["hypervolume"]), "n_eval": int(gens[-1].get("n_eval", 0)),
                         "generations": len(gens), "feasible": gens[-1].get("feasible")}
    return out or None


def inherited_accuracy(run: RunData, arch_key: str, arch: Any) -> float | None:
    rec = no_exit_record(run, arch_key)
    if rec is not None:
        return float(rec["accuracy"])
    cache = load_cache(run, arch)
    return None if cache is None else float(cache.correct[-1].mean())


def rank_correlation(run: RunData, epochs: int) -> dict[str, Any]:
    """Inherited-weight val accuracy (no exits) vs from-scratch accuracy over the baselines trained
    ``epochs`` epochs (training lengths are not mixed: a longer run would rank higher for that alone)."""
    from scipy.stats import kendalltau, spearmanr

    from supernet.space import Arch

    pairs = []
    for b in from_scratch(run):
        if b.get("epochs") != epochs:
            continue
        arch = Arch.from_dict(b["arch"])
        inh = inherited_accuracy(run, b.get("arch_key") or arch.key(), arch)
        if inh is not None:
            pairs.append({"tag": b["tag"], "inherited": inh, "scratch_val": b.get("val_accuracy"),
                          "scratch_test": b["test_accuracy"], "macs": b.get("macs")})
    out: dict[str, Any] = {"pairs": pairs, "n": len(pairs), "epochs": epochs}
    if len(pairs) >= 3:
        inh = [p["inherited"] for p in pairs]
        for split in ("val", "test"):
            other = [p[f"scratch_{split}"] for p in pairs]
            if any(v is None for v in other):
                continue
            if len(set(inh)) < 2 or len(set(other)) < 2:
                out[f"spearman_{split}"] = out[f"kendall_{split}"] = None  # undefined: one side is constant
                continue
            out[f"spearman_{split}"] = float(spearmanr(inh, other).statistic)
            out[f"kendall_{split}"] = float(kendalltau(inh, other).statistic)
    return out


@dataclass
class Goal:
    text: str
    status: str  # met / missed / not run / n/a
    detail: str


def evaluated(run: RunData) -> list[Export]:
    """Evaluated early-exit networks (no-exit controls are static rivals, ``no_exit_control``)."""
    return [e for e in run.exports if e.eval and not e.control]


def goal_accuracy(run: RunData) -> Goal:
    text = f"CIFAR-10 test accuracy >= {100 * GOAL_ACCURACY:g}% at expected MACs <= {GOAL_MACS / 1e6:g} M"
    if run.dataset != "cifar10":
        return Goal(text, "n/a", f"the issue sets it for CIFAR-10; this run is {run.dataset}")
    evs = evaluated(run)
    if not evs:
        return Goal(text, "not run", "no evaluated export (`nachos export`, then `nachos eval`)")
    found = best_een_within(evs, GOAL_MACS)
    if found is None:
        cheapest = min(evs, key=lambda e: e.eval["expected_macs"])
        return Goal(text, "missed", f"no evaluated export within {GOAL_MACS / 1e6:g} M expected MACs on test "
                                    f"(cheapest: {cheapest.id}, {mmacs(cheapest.eval['expected_macs'])})")
    best, point = found
    acc = point["accuracy"]
    where = (f"{best.id} ({point['label']}): {pct(acc)} at {mmacs(point['expected_macs'])} "
             f"({best.eval.get('images')} test images)")
    if acc >= GOAL_ACCURACY:
        return Goal(text, "met", where)
    return Goal(text, "missed", f"by {100 * (GOAL_ACCURACY - acc):.2f} points; best {where}")


def lineage_epochs(run: RunData, e: Export) -> int:
    """Epochs export ``e``'s backbone trained, added up along its lineage as ``no_exit_control`` adds up a
    control's: the supernet's epochs plus any fine-tuning from its weights; a retrained EEN's own alone
    (``export.finetune_init=scratch``, often from a 1-epoch vehicle supernet: it owes nothing to the
    supernet's training); exits on a static network's frozen backbone, that network's epochs (at least the
    supernet's, as ``nachos finetune`` asks) plus any joint fine-tuning after (training the heads alone
    leaves the backbone)."""
    sup = run.cfg.train.epochs
    ft = e.manifest.get("finetune") or {}
    own = int(ft.get("epochs", 0)) if e.training in ("inherited", "scratch", "static+joint") else 0
    under = 0 if e.training == "scratch" else sup
    if e.training in ("static", "static+joint"):
        static = static_under(run, e)
        under = max(sup, int(static["epochs"]) if static else 0)
    return under + own


def rival_epochs(run: RunData) -> int:
    """Epochs a static baseline needs to rival the run's EENs: the most that any EEN's backbone trained
    (``lineage_epochs``), at least the supernet's."""
    return max([run.cfg.train.epochs] + [lineage_epochs(run, e) for e in evaluated(run)])


def rival_problem(run: RunData, baseline: dict[str, Any], needed: int | None = None) -> str | None:
    """Why a static baseline is no like-for-like rival of the run's EENs, or None: trained fewer than
    ``needed`` epochs (by default ``rival_epochs``; say, for the rank correlation: it would flatter the
    EENs), or scored on other test images: another data set, or another ``export.test_subset`` (a finished
    baseline keeps the one it was scored with; a baseline copied from another seed's run drew its own)."""
    needed = rival_epochs(run) if needed is None else needed
    if baseline.get("epochs", 0) < needed:
        return f"fewer epochs than the EENs' {needed}"
    data = baseline.get("dataset")
    if data is not None and data != run.cfg.data.name:
        return f"trained on {data}, the EENs on {run.cfg.data.name}"
    # records older than the digest are judged by their size alone
    theirs_digest, ours_digests = baseline.get("test_digest"), {e.eval.get("test_digest") for e in evaluated(run)}
    ours_digests.discard(None)
    if theirs_digest is not None and ours_digests and theirs_digest not in ours_digests:
        return "scored on other test images than the EENs (another seed's export.test_subset)"
    theirs, ours = baseline.get("test_images"), {e.eval.get("images") for e in evaluated(run)} - {None}
    if theirs is not None and ours and theirs not in ours:
        return f"scored on {theirs} test images, the EENs on {', '.join(str(n) for n in sorted(ours))}"
    return None


def like_for_like(run: RunData, baseline: dict[str, Any], needed: int | None = None) -> bool:
    return rival_problem(run, baseline, needed) is None


# why ``short_of_static`` exports are left out of goal 3, in the report's words
SHORT_REASON = ("inherited weights of a supernet trained fewer epochs than a like-for-like static network, or "
                "than an EEN of the run that does not build on its weights")


def like_for_like_statics(run: RunData, arch_key: str | None, needed: int | None = None) -> list[dict[str, Any]]:
    """The run's static networks of ``arch_key`` (no exits, trained alone) that are like-for-like rivals
    (trained at least ``needed`` epochs, by default ``rival_epochs``)."""
    return [b for b in run.baselines if arch_key and b.get("arch_key") == arch_key and like_for_like(run, b, needed)]


def short_of_static(run: RunData, e: Export) -> bool:
    """Whether the export holds a supernet's inherited weights trained for fewer epochs than the
    static network of its backbone: say, a 1-epoch supernet used only to write an export for
    `nachos finetune`; such weights say nothing about goal 3. Against the shortest such network
    trained like for like (one trained as long as the supernet makes the export a fair match, however
    many longer ones there are), or, with none, against the longest EEN of the run that does not build
    on the supernet's weights (retrained from scratch, or exits on a static network): a barely trained
    export's own final classifier is as poor as its exits, so it alone cannot tell, while a longer
    fine-tune from the supernet's weights says nothing of how long the supernet itself trained."""
    if e.finetuned:
        return False
    sup = run.cfg.train.epochs
    # the bar leaves out fine-tunes from the supernet's weights (``rival_epochs`` counts them)
    bar = max([sup] + [lineage_epochs(run, x) for x in evaluated(run)
                       if x.training in ("scratch", "static", "static+joint")])
    held = [int(b["epochs"]) for b in like_for_like_statics(run, e.manifest.get("arch_key"), bar)]
    return sup < min(held, default=bar)


def een_points(e: Export) -> list[dict[str, Any]]:
    """An evaluated export's deployable operating points on test: its own thresholds, then those of
    its trade-off curve (thresholds chosen on validation per MAC budget, ``eval.evaluate``)."""
    ev = e.eval or {}
    val = ev.get("validation") or {}
    own = {"label": "own thresholds", "val_accuracy": val.get("accuracy"),
           "val_expected_macs": val.get("expected_macs"),
           "accuracy": float(ev["accuracy"]), "expected_macs": float(ev["expected_macs"])}
    return [own] + [{"label": f"thresholds {p['thresholds']}", "val_accuracy": p["val"]["accuracy"],
                     "val_expected_macs": p["val"].get("expected_macs"),
                     "accuracy": p["test"]["accuracy"], "expected_macs": p["test"]["expected_macs"]}
                    for p in ev.get("tradeoff", [])]


def best_een_within(exports: list[Export], macs: float) -> tuple[Export, dict[str, Any]] | None:
    """The EEN and operating point a deployer would pick for a budget of ``macs`` expected MACs,
    choosing on validation alone: the most accurate point there within the budget there, over every
    point of every export (choosing on test would flatter the pick, the more so the more exports).
    A point without validation MACs (an old eval.json) is admitted by its test MACs."""
    within = [(e, p) for e in exports for p in een_points(e)
              if (p["val_expected_macs"] if p["val_expected_macs"] is not None else p["expected_macs"]) <= macs]
    return max(within, key=lambda ep: (ep[1]["val_accuracy"] or 0.0, -ep[1]["expected_macs"])) if within else None


def searched(e: Export) -> bool:
    """Whether the export's backbone came out of the search (not ``export.select=hand``)."""
    return e.candidate[0] != "hand"


def baseline_comparison(run: RunData, searched_only: bool = False) -> list[dict[str, Any]]:
    """Per static baseline (by MACs): whether it is a like-for-like rival and, if so, the most
    accurate evaluated EEN within its MACs (``best_een_within``); with ``searched_only``, among
    EENs whose backbone the search chose."""
    evs = [e for e in evaluated(run) if searched(e) or not searched_only]
    out = []
    for b in sorted(run.baselines, key=lambda b: b["macs"]):
        rival = like_for_like(run, b)
        best = best_een_within(evs, b["macs"]) if rival else None
        out.append({"baseline": b, "rival": rival, "een": None if best is None else best[0],
                    "point": None if best is None else best[1],
                    "gap": None if best is None else best[1]["accuracy"] - b["test_accuracy"]})
    return out


def goal_baselines(run: RunData) -> Goal:
    text = "searched EENs beat static baselines of equal expected MACs (test accuracy)"
    if not any(like_for_like(run, b) for b in run.baselines):
        return Goal(text, "not run", f"no static baseline trained >= the EENs' {rival_epochs(run)} epochs "
                                     "(`nachos baseline`)")
    if not evaluated(run):
        return Goal(text, "not run", "no evaluated export (`nachos export`, then `nachos eval`)")

    def verdict(comp: list[dict[str, Any]]) -> tuple[bool, str]:
        lost = [c for c in comp if c["een"] is None or c["gap"] < 0]
        parts = []
        for c in comp:
            b = c["baseline"]
            if c["een"] is None:
                parts.append(f"{b['tag']} ({pct(b['test_accuracy'])} at {mmacs(b['macs'])}): no evaluated EEN at or "
                             "below its MACs")
            else:
                p = c["point"]
                parts.append(f"{b['tag']} ({pct(b['test_accuracy'])} at {mmacs(b['macs'])}) vs {c['een'].id} "
                             f"({pct(p['accuracy'])} at {mmacs(p['expected_macs'])}, {p['label']}): "
                             f"{points(c['gap'])}")
        head = f"{len(comp) - len(lost)} of {len(comp)} baselines beaten" if lost else f"all {len(comp)} beaten"
        worst = min((c["gap"] for c in lost if c["gap"] is not None), default=None)
        if worst is not None:
            head += f"; largest shortfall {100 * -worst:.2f} points"
        return not lost, head + ". " + "; ".join(parts)

    hand_part = ""
    if any(not searched(e) for e in evaluated(run)):
        _, detail_all = verdict([c for c in baseline_comparison(run) if c["rival"]])
        hand_part = ("backbones chosen by hand (`export.select=hand`: the space's hand-designed network or "
                     f"`export.hand_arch`) with the exits and thresholds nachos chose for them: {detail_all}")
    if not any(searched(e) for e in evaluated(run)):
        return Goal(text, "not run", "no evaluated EEN with a searched backbone in this run" +
                    (f"; counting {hand_part}" if hand_part else ""))
    ok, detail = verdict([c for c in baseline_comparison(run, searched_only=True) if c["rival"]])
    if hand_part:
        detail = f"EENs with searched backbones: {detail}. Counting also {hand_part}"
    return Goal(text, "met" if ok else "missed", detail)


def goal_savings(run: RunData) -> Goal:
    text = (f"early exits save >= {100 * GOAL_SAVING:g}% expected MACs at <= {100 * GOAL_MAX_LOSS:g} points accuracy "
            "loss vs the same backbone without exits (test, at the operating point chosen on validation)")
    rows = exit_ablation_test(run)
    if not rows:
        return Goal(text, "not run", "no evaluated export (`nachos export`, then `nachos eval`)")
    # a barely trained export saves much at little loss against its own poor final classifier
    short = {e.id for e in evaluated(run) if short_of_static(run, e)} & {r["id"] for r in rows}
    rows = [r for r in rows if r["id"] not in short]
    left_out = f"left out: {', '.join(sorted(short))} ({SHORT_REASON})" if short else ""
    if not rows:
        return Goal(text, "not run", f"no evaluated export to judge; {left_out}: train them on (`nachos finetune`)")
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    ops = [op for op in (operating_row(g) for g in by_id.values()) if op is not None]
    if not ops:
        return Goal(text, "not run", "no eval.json holds an operating point (written since session 12): rerun "
                                     "`nachos eval` on the exports")
    # among several exports, the one that saves most on validation: test picks nothing
    best = max(ops, key=lambda r: r["val_saving"] if r["val_saving"] is not None else r["saving"])
    ref = (f"its own final classifier {pct(best['alone'])}" if best["static"] is None else
           f"the better of its own final classifier {pct(best['alone'])} and the static network {pct(best['static'])}")
    where = (f"{best['id']} ({best['thresholds']}): {pct(best['saving'], 1)} saving at {points(-best['loss'])} "
             f"({pct(best['accuracy'])} vs {ref})")
    if best["static"] is not None:
        where += f"; against the static network alone {points(best['accuracy'] - best['static'])}"
    where += f"; {left_out}" if left_out else ""
    if savings_goal_met(best):
        return Goal(text, "met", where + ".")
    if best["loss"] > GOAL_MAX_LOSS + 1e-12:
        return Goal(text, "missed", f"the operating point loses {100 * best['loss']:.2f} points on test (budget "
                                    f"{100 * GOAL_MAX_LOSS:g}): {where}.")
    return Goal(text, "missed", f"by {100 * (GOAL_SAVING - best['saving']):.1f} points of saving: {where}.")
