"""Report sections over several runs: settings side by side, repeats across seeds (goal 3, mean ± sd)
and the inherited ranking of the same backbones across supernets."""
from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np

from eval.analysis import (best_een_within, evaluated, exit_ablation_test, like_for_like, operating_row,
                           SHORT_REASON, savings_goal_met, short_of_static, static_of)
from eval.formatting import mean_sd, mmacs, override, pct, points, table
from eval.run_folder import Export, RunData, baseline_seed, copied_from, from_note, from_scratch
from nachos.config import config_to_dict


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


# Saved settings that shape the networks, the data splits and the search: runs equal in all of
# them but the seed repeat one recipe.
RECIPE_SECTIONS = ("data", "space", "exits", "train", "search")
# those that shape a supernet's weights (the search does not)
SUPERNET_SECTIONS = ("data", "space", "exits", "train")


def config_differences(base: dict[str, Any], other: dict[str, Any],
                       sections: tuple[str, ...] = RECIPE_SECTIONS) -> list[str]:
    """``key=value`` of ``other``'s settings in ``sections`` that differ from ``base``'s."""
    a = _flatten({k: base.get(k) or {} for k in sections})
    b = _flatten({k: other.get(k) or {} for k in sections})
    return [override(k, b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def settings(run: RunData) -> dict[str, Any]:
    """The run's saved settings with the defaults of keys added since it ran filled in, so that an
    older run does not differ from a newer one in a key it never had."""
    return config_to_dict(run.cfg) if run.has_config else run.config_dict


def comparison_lines(runs: list[RunData]) -> list[str]:
    """One row per run: what its supernet was trained with (relative to the first run) and what
    the search and the test split made of it, so ablations across runs read as one table."""
    first = runs[0]
    rows = []
    for run in runs:
        sn, sm = run.metrics or {}, run.summary or {}
        # picked on validation as everywhere else in the report: the best on test flatters the run
        best = best_een_within(evaluated(run), math.inf)
        diff = "(reference)" if run is first else (", ".join(f"`{d}`" for d in config_differences(
            settings(first), settings(run))) or "same settings")
        front = run.front
        rows.append([f"`{run.name}`", diff, pct(sn.get("val/largest/final")), pct(sn.get("val/smallest/final")),
                     str(len(front)) if run.pareto else "-",
                     f"{sm['hypervolume']:.4f}" if isinstance(sm.get("hypervolume"), float) else "-",
                     pct(max((r["accuracy"] for r in front), default=None)),
                     mmacs(min((r[run.cost_key] for r in front), default=None)),
                     f"{pct(best[1]['accuracy'])} at {mmacs(best[1]['expected_macs'])}" if best else "-"])
    # a hypervolume is measured from its reference point, on its cost axis
    scales = {json.dumps([r.pareto.get(k) for k in ("constraints", "reference_point", "cost_key")], sort_keys=True)
              for r in runs if r.pareto}
    note = ([] if len(scales) <= 1 else
            ["", "The searches ran under different constraints, hypervolume reference points or cost axes: "
                 "their hypervolumes are not comparable."])
    return table(["run", "settings (against the first)", "val acc largest", "val acc smallest", "admissible front",
                  "hypervolume (val)", "best admissible val acc", "lowest admissible exp. MACs",
                  "best export on val: test acc at exp. MACs"], rows) + note


def recipe_key(run: RunData) -> str:
    saved = settings(run)
    return json.dumps({k: saved.get(k) for k in RECIPE_SECTIONS}, sort_keys=True, default=str)


def seed_repeats(runs: list[RunData]) -> list[tuple[str, list[tuple[RunData, Export]]]]:
    """(export id, [(run, export), ...]) for each evaluated export id that at least two runs of one
    recipe with different seeds hold with the same backbone and exits (a searched export's id numbers
    the seed's own front), in the order the runs were given, one per seed (the first: a rerun of a seed
    is no new draw), ``short_of_static`` ones left out."""
    groups: dict[tuple[str, str, Any, str], dict[Any, tuple[RunData, Export]]] = {}
    for run in runs:
        if not run.has_config:
            continue
        for e in evaluated(run):
            if e.eval.get("exit_accuracy_all_samples") and not short_of_static(run, e):
                key = (recipe_key(run), e.id, e.manifest.get("arch_key"), json.dumps(e.manifest.get("exits")))
                groups.setdefault(key, {}).setdefault(run.cfg.seed, (run, e))
    return [(key[1], list(by_seed.values())) for key, by_seed in groups.items() if len(by_seed) >= 2]


def repeat_row(run: RunData, e: Export, ablation: list[dict[str, Any]]) -> dict[str, Any]:
    """Goal 3 read off one export (``ablation``: the run's ``exit_ablation_test``): its operating
    point chosen on validation (``operating_row``), judged on test against the better of its final
    classifier and the static network that seed trained (``static_of(own_seed=True)``)."""
    rows = [r for r in ablation if r["id"] == e.id]
    static = static_of(run, e.manifest.get("arch_key"), own_seed=True)
    op = operating_row(rows)
    if op is not None:
        ref = op["alone"] if static is None else max(op["alone"], float(static["test_accuracy"]))
        op = dict(op, static=None if static is None else float(static["test_accuracy"]), loss=ref - op["accuracy"])
    return {"static": static, "alone": rows[0]["alone"], "first": float(e.eval["exit_accuracy_all_samples"][0]),
            "op": op, "met": op is not None and savings_goal_met(op)}


Rivals = list[tuple[RunData, Export, dict[str, Any]]]


def repeat_rivals(members: list[tuple[RunData, Export]]) -> list[tuple[tuple[str, ...], Rivals]]:
    """Per static network (by arch) that at least two of the seeds trained like-for-like
    (``like_for_like``): (how its training differs from the runs', [(run, export, that seed's static
    network), ...]), cheapest network first, so goal 2's head-to-head is read across seeds, not off
    one. Networks are matched by their arch
    string (a baseline copied in from a run of another space keeps that space's arch key), epochs and
    how their training differs from their run's (``recipe_differences``: a copy trained with cutout
    repeats no seed's own network); a run holding two such, one trained there and one copied in,
    enters with its own."""
    groups: dict[tuple[str, Any, tuple[str, ...]], dict[Any, tuple[RunData, Export, dict[str, Any]]]] = {}
    for run, e in members:
        ref = run_training_recipe(run)
        mine: dict[tuple[str, Any, tuple[str, ...]], dict[str, Any]] = {}
        for b in sorted(run.baselines, key=lambda b: copied_from(run, b) is not None):
            key = (str(b.get("arch_str") or b["tag"]), b.get("epochs"), tuple(recipe_differences(ref, b)))
            if like_for_like(run, b) and baseline_seed(run, b) == run.cfg.seed:
                mine.setdefault(key, b)
        for key, b in mine.items():
            by_seed = groups.setdefault(key, {})
            by_seed.setdefault(run.cfg.seed, (run, e, b))
    kept = [(key[2], list(g.values())) for key, g in groups.items() if len(g) >= 2]
    return sorted(kept, key=lambda kg: min(b["macs"] for _, _, b in kg[1]))


def rival_lines(members: list[tuple[RunData, Export]]) -> list[str]:
    """Goal 2 across seeds: per static network repeated in the seeds, each seed's EEN point within
    its MACs (the one validation picks, ``best_een_within``) against it, and the mean ± sd gap."""
    out: list[str] = []
    for diffs, group in repeat_rivals(members):
        rows, gaps, statics, eens = [], [], [], []
        for run, e, b in group:
            found = best_een_within([e], b["macs"])
            static = f"{pct(b['test_accuracy'])} at {mmacs(b['macs'])}{from_note(run, b)}"
            statics.append(b["test_accuracy"])
            if found is None:
                rows.append([f"`{run.name}`", str(run.cfg.seed), static, "none at or below its MACs", "lost"])
                continue
            p = found[1]
            gap = p["accuracy"] - b["test_accuracy"]
            gaps.append(gap)
            eens.append(p["accuracy"])
            rows.append([f"`{run.name}`", str(run.cfg.seed), static,
                         f"{pct(p['accuracy'])} at {mmacs(p['expected_macs'])} ({p['label']})", points(gap)])
        won = sum(g > 0 for g in gaps)
        rows.append(["**mean ± sd**", "", mean_sd(statics), mean_sd(eens),
                     f"{mean_sd(gaps, unit=' points')}; won {won} of {len(group)}"])
        first = group[0][2]
        out += [f"Against the static network `{first.get('arch_str') or first['tag']}`"
                + (f" ({', '.join(diffs)})" if diffs else "") + f", trained {first.get('epochs')} epochs in each seed:",
                ""] + table(
            ["run", "seed", "static network (test)", "EEN within its MACs (test)", "EEN - static"], rows) + [""]
    return out


def repeat_lines(runs: list[RunData]) -> list[str]:
    """Per export repeated across seeds: one row per seed and the mean ± sample sd, so a goal met
    by one seed is seen next to the others."""
    out: list[str] = []
    repeats = seed_repeats(runs)
    ablation = {run.name: exit_ablation_test(run) for _, members in repeats for run, _ in members}
    for eid, members in repeats:
        rows, stats = [], [repeat_row(run, e, ablation[run.name]) for run, e in members]
        for (run, _), st in zip(members, stats):
            b, op = st["static"], st["op"]
            static = "-" if b is None else pct(b["test_accuracy"]) + from_note(run, b)
            chosen = "-" if op is None else (f"{pct(op['saving'], 1)}: {pct(op['accuracy'])} at "
                                             f"{mmacs(op['expected_macs'])} ({points(-op['loss'])})")
            rows.append([f"`{run.name}`", str(run.cfg.seed), static, pct(st["alone"]), pct(st["first"]), chosen,
                         "met" if st["met"] else "missed"])
        statics = [st["static"]["test_accuracy"] for st in stats if st["static"] is not None]
        ops = [st["op"] for st in stats if st["op"] is not None]
        rows.append(["**mean ± sd**", "", mean_sd(statics), mean_sd([st["alone"] for st in stats]),
                     mean_sd([st["first"] for st in stats]),
                     (f"{mean_sd([op['saving'] for op in ops], 1)}; lost "
                      f"{mean_sd([op['loss'] for op in ops], unit=' points')}") if ops else "-",
                     f"{sum(st['met'] for st in stats)} of {len(stats)} met"])
        out += [f"### `{eid}`", ""] + table(
            ["run", "seed", "static network (no exits)", "final classifier", "first exit",
             "operating point chosen on validation: saving, test accuracy (loss)", "goal 3"],
            rows) + [""] + rival_lines(members)
    short = [f"{run.name}/{e.id}" for run in runs if run.has_config for e in evaluated(run) if short_of_static(run, e)]
    if out:
        out = ["Losses and savings are against the better of the export's own final classifier and the "
               "static network of its backbone (goal 3). The point is the eval's operating point, the cheapest "
               "thresholds within `export.max_accuracy_drop` of the final classifier on validation at a one-sided "
               "confidence bound: chosen before test is seen, and judged on test." +
               (" Left out: " + ", ".join(f"`{i}`" for i in short) + f" ({SHORT_REASON})." if short else ""),
               ""] + out
    return out[:-1] if out else out


def inherited_finals(run: RunData) -> dict[str, float]:
    """What the run's supernet says of each backbone exported from it with inherited weights: the
    final classifier's test accuracy in its ``eval.json``, by arch string (exits do not change it)."""
    out: dict[str, float] = {}
    for e in evaluated(run):
        accs = e.eval.get("exit_accuracy_all_samples") or []
        if e.training == "supernet" and e.manifest.get("arch_str") and accs:
            out.setdefault(e.manifest["arch_str"], float(accs[-1]))
    return out


# recorded recipe keys that do not change what a static network learns: the seed (that is a repeat), the
# supernet's length (a baseline records its own epochs), and precision and memory layout
_NOT_TRAINING = ("seed", "train.epochs", "train.random_max_macs", "train.amp", "train.channels_last",
                 "data.eval_batch_size")
# the space's choices: an arch string says which were taken (a static network has no exits)
_ARCH_CHOICES = ("widths", "depths", "kernels", "expand_ratios", "final_widths", "exit_positions")


def training_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The settings of a recipe (a static network's recorded one, or a run's saved data, train and space)
    that shape what a static network learns and its arch string does not name (``data.augment.cutout``,
    ``space.dropout``, each stage's stride, SE and activation...), flattened."""
    rec = dict(recipe)
    if isinstance(rec.get("space"), dict):
        space = {k: v for k, v in rec["space"].items() if k not in _ARCH_CHOICES}
        if isinstance(space.get("stages"), list):
            space["stages"] = [{k: v for k, v in st.items() if k not in _ARCH_CHOICES} for st in space["stages"]]
        rec["space"] = space
    return {k: v for k, v in _flatten(rec).items() if k not in _NOT_TRAINING}


def run_training_recipe(run: RunData) -> dict[str, Any]:
    """``training_recipe`` of the run's own saved settings: what its static networks trained with."""
    saved = settings(run)
    return training_recipe({k: saved.get(k) for k in ("data", "train", "space")})


def recipe_differences(ref: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``key=value`` of how static network ``b``'s recorded training differs from ``ref`` (a
    ``training_recipe``); a record that kept no recipe trained with the run's."""
    mine = training_recipe(b.get("recipe") or {})
    # a key one record lacks was added since it was written: unknown, not a difference
    return [override(k, mine[k]) for k in sorted(set(ref) & set(mine)) if ref[k] != mine[k]]


def scratch_by_length(runs: list[RunData],
                      other_recipes: bool = True) -> dict[str, dict[int, dict[Any, dict[str, Any]]]]:
    """The static networks trained from scratch in ``runs`` as {network: {epochs: {seed: baseline}}}, one
    per network, length and seed however many runs hold a copy (the first given). A network is its arch
    string, followed by how its training differs from the recipe of the first run (the reported one; say,
    with cutout), so that networks trained otherwise are neither taken for repeats nor for copies of
    each other; ``other_recipes=False`` leaves those out."""
    out: dict[str, dict[int, dict[Any, dict[str, Any]]]] = {}
    ref = run_training_recipe(runs[0]) if runs else {}
    for run in runs:
        for b in from_scratch(run):
            if isinstance(b.get("epochs"), int) and b.get("arch_str"):
                diffs = recipe_differences(ref, b)
                if diffs and not other_recipes:
                    continue
                name = b["arch_str"] + (f" ({', '.join(diffs)})" if diffs else "")
                out.setdefault(name, {}).setdefault(b["epochs"], {}).setdefault(baseline_seed(run, b), b)
    return out


def pairs_agreeing(pairs: list[tuple[str, str]], ours: dict[str, float], theirs: dict[str, float]) -> int:
    """How many of ``pairs`` the two scores order alike."""
    return sum((ours[a] - ours[b]) * (theirs[a] - theirs[b]) > 0 for a, b in pairs)


def scratch_accuracies(runs: list[RunData]) -> tuple[int | None, dict[str, list[float]]]:
    """Test accuracies of the static networks trained from scratch in ``runs`` with the first run's
    recipe (what the supernet's inherited weights are set against), one per (arch, seed) however many
    runs hold a copy, at one training length: the one that covers the most backbones (the longer on a
    tie), since a longer run ranks higher for that alone."""
    by_arch = scratch_by_length(runs, other_recipes=False)
    lengths = {e for by_len in by_arch.values() for e in by_len}
    if not lengths:
        return None, {}
    epochs = max(lengths, key=lambda e: (sum(e in by_len for by_len in by_arch.values()), e))
    return epochs, {a: [b["test_accuracy"] for b in by_len[epochs].values()]
                    for a, by_len in by_arch.items() if epochs in by_len}


def length_lines(runs: list[RunData]) -> list[str]:
    """Static networks trained from scratch at several lengths in ``runs`` (one per arch, length and
    seed): the mean test and validation accuracy of each at each length, the gap to the network that
    is best at the longest, and how many pairs each length orders as the longest does. Gaps and pair
    orders are paired by seed, over the seeds both networks were trained in: a seed draws its own
    validation split, so a network trained in one seed more than another would otherwise shift the
    gap by that seed's split and draw. The first network is the one with the best mean at the longest;
    over the seeds they share, another may still show a positive gap to it. A short training that
    ranks networks as a long one does could stand in for it (to re-score a search's front); one that
    does not shows why a supernet's short effective training misranks them. Empty unless two networks
    were each trained at two lengths or more."""
    acc: dict[str, dict[int, dict[Any, tuple[float, float]]]] = {}
    macs: dict[str, float] = {}
    for a, by_len in scratch_by_length(runs).items():
        for e, seeds in by_len.items():
            for seed, b in seeds.items():
                if b.get("val_accuracy") is not None:
                    acc.setdefault(a, {}).setdefault(e, {})[seed] = (b["test_accuracy"], b["val_accuracy"])
                    macs[a] = b["macs"]
    archs = [a for a, by_len in acc.items() if len(by_len) >= 2]
    lengths = sorted({e for a in archs for e in acc[a]})
    if len(archs) < 2:
        return []
    longest = lengths[-1]

    def mean(a: str, e: int, which: int) -> float | None:
        vals = [v[which] for v in acc[a].get(e, {}).values()]
        return float(np.mean(vals)) if vals else None

    def gap(a: str, b: str, e: int, which: int) -> float | None:
        common = set(acc[a].get(e, {})) & set(acc[b].get(e, {}))
        diffs = [acc[a][e][s][which] - acc[b][e][s][which] for s in common]
        return float(np.mean(diffs)) if diffs else None

    at_longest = [a for a in archs if mean(a, longest, 0) is not None]
    archs.sort(key=lambda a: (-(mean(a, longest, 0) or -1.0), macs[a]))
    ref = archs[0]
    out: list[str] = []
    for which, split in ((0, "test"), (1, "validation")):
        rows = []
        for a in archs:
            cells = []
            for e in lengths:
                m, g = mean(a, e, which), gap(a, ref, e, which)
                n = len(acc[a].get(e, {}))
                cells.append("-" if m is None else pct(m) + ("" if a == ref or g is None else f" ({points(g)})")
                             + f", n={n}")
            rows.append([f"`{a}`" + (" (ref)" if a == ref else ""), mmacs(macs[a])] + cells)
        agree_row = []
        for e in lengths:
            if which == 0 and e == longest:  # the reference itself
                agree_row.append("-")
                continue
            signs = [(gap(a, b, e, which), gap(a, b, longest, 0)) for a, b in itertools.combinations(at_longest, 2)]
            signs = [(here, there) for here, there in signs if here is not None and there is not None]
            agree = sum(here * there > 0 for here, there in signs)
            agree_row.append(f"{agree} of {len(signs)}" if signs else "-")
        rows.append([f"pairs ordered as on test at {longest} epochs", ""] + agree_row)
        out += [f"{split.capitalize()} accuracy (mean over seeds; gaps to the first network at the same length, "
                "over the seeds both were trained in):",
                ""] + table(["network", "MACs"] + [f"{e} epochs" for e in lengths], rows) + [""]
    return out[:-1]


def ranking_lines(runs: list[RunData]) -> list[str]:
    """Each supernet's inherited final-classifier accuracy of the backbones also trained from scratch,
    columns in from-scratch order (best first) with the gap to the first: a supernet that ranks them
    as training does falls left to right. Empty unless two such backbones were exported."""
    from scipy.stats import kendalltau

    epochs, scratch = scratch_accuracies(runs)
    finals = [(run, inherited_finals(run)) for run in runs]
    rows_of = [(run, f) for run, f in finals if len(set(f) & set(scratch)) >= 2]
    means = {a: float(np.mean(accs)) for a, accs in scratch.items()}
    archs = sorted({a for _, f in rows_of for a in f if a in scratch}, key=lambda a: -means[a])
    if len(archs) < 2:
        return []
    ref = archs[0]

    def cell(acc: float | None, ref_acc: float | None, a: str) -> str:
        if acc is None:
            return "-"
        return pct(acc) + (" (ref)" if a == ref else "" if ref_acc is None else f" ({points(acc - ref_acc)})")

    def order(inh: dict[str, float]) -> str:
        shared = [a for a in archs if a in inh]
        if len(shared) < 3:
            return "-"
        pairs = list(itertools.combinations(shared, 2))
        agree = pairs_agreeing(pairs, inh, means)
        tau = kendalltau([inh[a] for a in shared], [means[a] for a in shared]).statistic
        return f"{agree} of {len(pairs)} (Kendall {tau:+.2f})"

    first = rows_of[0][0]
    rows = []
    for run, inh in rows_of:
        # epochs and seed have their own columns
        differs = [d for d in config_differences(settings(first), settings(run), SUPERNET_SECTIONS)
                   if not d.startswith("train.epochs=")]
        diff = "(reference)" if run is first else ", ".join(f"`{d}`" for d in differs) or "same settings"
        rows.append([f"`{run.name}`", str(run.cfg.seed), str(run.cfg.train.epochs), diff]
                    + [cell(inh.get(a), inh.get(ref), a) for a in archs] + [order(inh)])
    rows.append(["**from scratch**, mean of seeds", "", str(epochs), ""]
                + [f"{cell(means[a], means[ref], a)}, n={len(scratch[a])}" for a in archs] + ["all"])
    legend = [[f"#{i + 1}", f"`{a}`", pct(means[a]), str(len(scratch[a]))] for i, a in enumerate(archs)]
    return (table(["backbone", "arch", f"from scratch, {epochs} epochs (mean)", "seeds"], legend) + [""]
            + table(["supernet run", "seed", "epochs", "trained with (against the first)"]
                    + [f"#{i + 1}" for i in range(len(archs))] + ["pairs ordered as from scratch"], rows))
