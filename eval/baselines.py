"""``nachos baseline``: static networks (no early exit) trained from scratch, the networks a user
would pick instead of a searched early-exit network.

    nachos baseline --config configs/cifar10.yaml [export.baselines=front|backbones|hand|scored|matched|archs]
                    [export.max_baselines=4] [export.baseline_epochs=0]
    nachos baseline --config configs/cifar10.yaml runs/cifar10/export/nsga2-0147

Given an export folder, the one network is that export's backbone (a static rival of exactly its
architecture, say at the expected MACs of another export). Otherwise ``export.baselines`` says:

- ``backbones``: the distinct backbones of the run's admissible Pareto front
  (``<run_dir>/search/pareto.json``), at most ``export.max_baselines`` of them spread evenly
  along the front by expected MACs, each trained ALONE without exit heads. Against the search's
  inherited-weight accuracy of the same backbone this measures how well weight sharing ranks
  subnets; against the early-exit solution it measures what the exits buy.
- ``hand``: one hand-designed plain MBConv network of the run's space (``hand_designed_arch``).
  In the default CIFAR-10 space (configs/cifar10.yaml) it is
  ``w16[k3e1] w24[k3e3,k3e3] w32[k3e3,k3e3] w48[k3e3,k3e3] w64[k3e3,k3e3] f128``:
  2,394,746 MACs and 155,418 parameters by the calibrated table (``supernet.costs.MacTable``),
  about NACHOS's published 2.43 M budget.
- ``front`` (default): both.
- ``matched``: for at most ``export.max_baselines`` front solutions spread along the front, the
  static network the search would offer at that solution's expected MACs: the scored backbone,
  no dearer than that, whose final classifier alone was the most accurate from inherited weights
  (``matched_backbones``). The issue's rival: a static network of the EEN's expected MACs.
- ``archs``: the networks ``export.baseline_archs`` names, written as ``str(Arch)`` prints them
  (``SearchSpace.parse_arch``): say, plain rivals at the expected MACs of an early-exit network.

The recipe is the supernet's (``supernet.train``) with the run's own saved config
(``<run_dir>/config.yaml``): SGD with Nesterov momentum (or AdamW), ``train.lr``, weight decay
not on BN and biases, per-iteration cosine schedule with linear warm-up (timm), label
smoothing, gradient clipping, the same ``TensorLoader`` augmentation and batch size,
channels_last, bf16 autocast on GPU (training only). Epochs: ``export.baseline_epochs``, 0 = as
long as the run's EENs trained (``default_epochs``). Evaluated in fp32 on the validation split and on the test split
(``export.test_subset`` as ``nachos eval`` uses it, so baselines and exports see the same test
images, and in the same precision).

Writes ``<run_dir>/baselines/<tag>.json`` (atomic) and the checkpoint ``<tag>.pt`` after every
epoch; the tag ends in ``-e<epochs>`` when the epochs differ from the run's ``train.epochs``, so a
longer-trained rival sits beside the like-for-like one instead of replacing it. A rerun resumes
an unfinished baseline from its checkpoint and skips finished ones.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from eval.fit import fit
from nachos.config import (SUPERNET_ONLY_TRAIN_KEYS, Config, ConfigError, config_to_dict, save_config,
                           saved_config_here)
from nachos.runtime import (RunError, atomic_write_text, ensure_dir, json_digest, memory_format, resolve_device,
                            seed_everything)
from supernet.space import Arch, SearchSpace
from supernet.train import autocast_factory

FORMAT = "nachos-baseline"
VERSION = 1
HAND_TAG = "hand"
# train settings that do not change what a baseline learns (so they may differ on resume)
_NON_RECIPE_TRAIN = ("resume", "log_every", "compile", "n_random", "kd_temperature", "kd_loss",
                     "bn_calib_batches") + SUPERNET_ONLY_TRAIN_KEYS


# ----------------------------------------------------------------------------- which networks
def hand_designed_arch(space: SearchSpace) -> Arch:
    """A plain MobileNetV2-style network of ``space``: the first stage one block without expansion
    (its smallest depth and expand ratio), every later stage the depth nearest 2 with expand ratio
    nearest 3; 3x3 kernels (the smallest choice), the smallest widths and final width. A rule rather
    than a literal, so that every space (tiny, MNIST, own data) has one."""

    def nearest(choices: tuple[int, ...], target: int) -> int:
        return min(choices, key=lambda c: (abs(c - target), c))

    depths, kernels, ratios, widths = [], [], [], []
    for i, st in enumerate(space.stages):
        d = st.depths[0] if i == 0 else nearest(st.depths, 2)
        e = st.expand_ratios[0] if i == 0 else nearest(st.expand_ratios, 3)
        depths.append(d)
        kernels.append((st.kernels[0],) * st.max_depth)
        ratios.append((e,) * st.max_depth)
        widths.append(st.widths[0])
    return space.validate(Arch(tuple(depths), tuple(kernels), tuple(ratios), tuple(widths), space.final_widths[0]))


def spread(items: list[Any], k: int) -> list[Any]:
    """At most ``k`` of ``items`` (sorted by cost), evenly spaced, both ends included."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[-1]]
    picks = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, k)})
    return [items[i] for i in picks]


def front_backbones(front: list[dict[str, Any]], k: int) -> list[tuple[Arch, list[dict[str, Any]]]]:
    """Distinct archs of an admissible front (ordered by the expected MACs of their cheapest
    solution), each with the front records that use it; at most ``k``, spread along the front."""
    by_key: dict[str, tuple[Arch, list[dict[str, Any]]]] = {}
    for rec in sorted(front, key=lambda r: r["expected_macs"]):
        arch = Arch.from_dict(rec["arch"])
        by_key.setdefault(arch.key(), (arch, []))[1].append(rec)
    return spread(list(by_key.values()), k)


def scored_backbones(cfg: Config, k: int) -> list[tuple[str, Arch, dict[str, Any]]]:
    """At most ``k`` of the backbones the search scored from inherited weights, spread over their
    MACs, up to the size the search seeds from (``search.init_max_macs_ratio`` x the MAC budget):
    a spread of sizes, unlike a front that may sit on one backbone, for the rank correlation of
    inherited vs from-scratch accuracy."""
    from search.report import read_candidates

    path = cfg.run_dir / "search" / "candidates.jsonl"
    if not path.is_file():
        raise RunError(f"{path}: no search candidates, so no scored backbones; run the search first (make search)")
    archs = {}
    for rec in read_candidates(path):
        if rec.get("scored"):
            arch = Arch.from_dict(rec["arch"])
            archs[arch.key()] = arch
    table = mac_table(cfg)[0]
    costed = sorted((float(table.backbone_costs(a)[-1]), key, a) for key, a in archs.items())
    cap = cfg.search.init_max_macs_ratio * cfg.search.max_expected_macs
    if cap > 0:
        costed = [c for c in costed if c[0] <= cap]
    return [(f"backbone-{key}", arch, {"kind": "scored backbone", "arch_key": key})
            for _, key, arch in spread(costed, k)]


def export_backbone(cfg: Config, export_dir: str | Path) -> tuple[str, Arch, dict[str, Any]]:
    """(tag, arch, origin) of the backbone of one export of this run's space."""
    from eval.onnx_runner import read_manifest

    folder, m = read_manifest(export_dir)
    arch = Arch.from_dict(m["arch"])
    try:
        SearchSpace.from_config(cfg.space).validate(arch)
    except ValueError as err:
        raise RunError(f"export {folder} is not of run {cfg.name}'s search space ({err}); pass the config "
                       "the export's run was trained with") from None
    return (f"backbone-{arch.key()}", arch, {"kind": "export backbone", "arch_key": arch.key(), "export": m["id"],
                                              "expected_macs": m.get("expected_macs")})


def matched_backbones(cfg: Config, front: list[dict[str, Any]], k: int) -> list[tuple[str, Arch, dict[str, Any]]]:
    """The static network the search itself would offer at the expected MACs of each of at most
    ``k`` front solutions (spread along the part of the front that some scored backbone can match,
    since exits reach lower costs than any static network): of the backbones it scored, the one whose final
    classifier alone (inherited weights, validation split) is the most accurate among those whose
    whole forward pass costs no more than that solution's expected MACs. What a user would deploy
    instead of the early-exit network, chosen with the same supernet and the same data."""
    from search.cache import read_cache
    from search.report import read_candidates

    path = cfg.run_dir / "search" / "candidates.jsonl"
    if not path.is_file():
        raise RunError(f"{path}: no search candidates to match static networks from; run the search first "
                       "(make search)")
    archs = {}
    for rec in read_candidates(path):
        if rec.get("scored"):
            archs.setdefault(rec["arch_key"], Arch.from_dict(rec["arch"]))
    table = mac_table(cfg)[0]
    scored = []  # (MACs, inherited final-classifier accuracy, arch)
    for arch in archs.values():
        cache = read_cache(cfg.run_dir / "search" / "cache", arch)
        if cache is not None:
            scored.append((float(table.backbone_costs(arch)[-1]), float(cache.correct[-1].mean()), arch))
    if archs and not scored:
        raise RunError(f"{cfg.run_dir / 'search' / 'cache'}: none of the {len(archs)} backbones the search scored has "
                       "its prediction cache there (a run folder rebuilt from an archive keeps no caches), so no "
                       "static network can be matched; rerun the search (make search: it recomputes them) or "
                       "name the networks: export.baselines=archs export.baseline_archs=[...]")
    cheapest = min((c[0] for c in scored), default=float("inf"))
    front = sorted(front, key=lambda r: r["expected_macs"])
    matchable = [r for r in front if r["expected_macs"] >= cheapest]
    if len(matchable) < len(front):
        # exits reach costs no static network of the space reaches: nothing to match there
        print(f"note: {len(front) - len(matchable)} of {len(front)} front solutions cost less than any scored "
              f"backbone ({cheapest / 1e6:.3f} M MACs); they get no matched static network", file=sys.stderr)
    picks: dict[str, tuple[Arch, dict[str, Any]]] = {}
    for rec in spread(matchable, k):
        fits = [c for c in scored if c[0] <= rec["expected_macs"]]
        macs, acc, arch = max(fits, key=lambda c: (c[1], -c[0]))
        origin = picks.setdefault(arch.key(), (arch, {"kind": "matched static", "arch_key": arch.key(),
                                                      "inherited_val_accuracy": acc, "max_baselines": k,
                                                      "solutions": []}))[1]
        origin["solutions"].append({"id": rec.get("id"), "exits": rec.get("exits"),
                                    "accuracy_val": rec.get("accuracy"), "expected_macs": rec.get("expected_macs")})
    return [(f"backbone-{key}", arch, origin) for key, (arch, origin) in picks.items()]


def read_front(cfg: Config, mode: str) -> list[dict[str, Any]]:
    """The admissible front of the run's search; an empty one (with a note) only where ``mode``
    trains the hand-designed network anyway."""
    path = cfg.run_dir / "search" / "pareto.json"
    try:
        front = json.loads(path.read_text()).get("front", []) if path.is_file() else []
    except (OSError, ValueError, AttributeError) as err:
        raise RunError(f"search result {path} is damaged ({err}); rerun the search (make search)") from None
    if not front:
        why = "no search result" if not path.is_file() else "an empty admissible front"
        msg = f"{path}: {why}, so there are no front backbones to train or match"
        if mode != "front":
            raise RunError(msg + "; run the search first (make search), or use export.baselines=hand")
        print(f"note: {msg}; training the hand-designed baseline only", file=sys.stderr)
    return front


def choose_baselines(cfg: Config, mode: str, k: int) -> list[tuple[str, Arch, dict[str, Any]]]:
    """(tag, arch, origin) of every baseline that ``export.baselines=mode`` asks for."""
    space = SearchSpace.from_config(cfg.space)
    out: list[tuple[str, Arch, dict[str, Any]]] = []
    if mode == "matched":
        out += matched_backbones(cfg, read_front(cfg, mode), k)
    if mode in ("front", "backbones"):
        front = read_front(cfg, mode)
        for arch, recs in front_backbones(front, k):
            space.validate(arch)
            out.append((f"backbone-{arch.key()}", arch, {
                "kind": "front backbone", "arch_key": arch.key(),
                "solutions": [{"id": r.get("id"), "algorithm": r.get("algorithm"), "exits": r.get("exits"),
                               "accuracy_val": r.get("accuracy"), "expected_macs": r.get("expected_macs")}
                              for r in recs]}))
    if mode == "scored":
        out += scored_backbones(cfg, k)
    if mode == "archs":
        if not cfg.export.baseline_archs:
            raise RunError("export.baselines=archs names no network; add 'export.baseline_archs=[\"w16[k3e1] ... "
                           "f128\"]' (archs as reports print them)")
        for text in cfg.export.baseline_archs:
            try:
                arch = space.parse_arch(text)
            except ValueError as err:
                raise RunError(f"export.baseline_archs: {err}") from None
            out.append((f"backbone-{arch.key()}", arch, {"kind": "given arch", "arch_key": arch.key()}))
    elif cfg.export.baseline_archs:
        raise RunError(f"export.baseline_archs applies to export.baselines=archs only (not {mode}); add "
                       "export.baselines=archs, or drop export.baseline_archs")
    if mode in ("front", "hand"):
        arch = hand_designed_arch(space)
        if any(a == arch for _, a, _ in out):  # already trained under its backbone tag
            print(f"note: the hand-designed network {arch} is a front backbone too", file=sys.stderr)
            return out
        out.append((HAND_TAG, arch, {"kind": "hand-designed", "arch_key": arch.key(),
                                     "rule": "first stage 1 block e=min; later stages depth~2, e~3; k=min; "
                                             "smallest widths and final width"}))
    return out


# ----------------------------------------------------------------------------- configs
def run_config(cfg: Config, run_dir: Path | None = None) -> Config:
    """The run's saved config (``<run_dir>/config.yaml``, the settings it was trained with), with
    ``cfg``'s machine-specific fields (device, threads, data location, export, wandb, out_dir).

    (``nachos.config.saved_config_here``)."""
    run_dir = cfg.run_dir if run_dir is None else Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        return dataclasses.replace(cfg, name=run_dir.name, out_dir=str(run_dir.parent))
    try:
        saved = saved_config_here(yaml.safe_load(path.read_text()) or {}, cfg)
    except (ConfigError, yaml.YAMLError, OSError) as err:
        raise RunError(f"cannot read the run's config {path} ({err})") from None
    return dataclasses.replace(saved, name=run_dir.name, out_dir=str(run_dir.parent))


def subset_notice(cfg: Config, run: Config) -> str | None:
    """A warning when the run's saved data subsets, which the baselines train and score on, are not the
    command line's: a vehicle supernet run on a subset would otherwise give subset-trained baselines
    without a word."""
    keys = [k for k in ("train_subset", "val_subset") if getattr(cfg.data, k) != getattr(run.data, k)]
    if not keys:
        return None
    said = ", ".join(f"data.{k}={getattr(run.data, k)} there, {getattr(cfg.data, k)} here" for k in keys)
    return (f"warning: baselines train with the run's saved recipe ({run.run_dir / 'config.yaml'}): {said}; "
            f"to train them otherwise, edit that file's data block (0 = all images)")


def recipe(cfg: Config) -> dict[str, Any]:
    """What determines a baseline's training, for the result file and the resume check."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _NON_RECIPE_TRAIN}
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("root", "cache_dir", "download")}
    return {"train": train, "data": data, "space": dataclasses.asdict(cfg.space), "seed": cfg.seed}


def _fingerprint(cfg: Config, arch: Arch, epochs: int) -> str:
    return json_digest({"recipe": recipe(cfg), "arch": arch.to_dict(), "epochs": epochs})


def mac_table(cfg: Config) -> tuple[Any, str]:
    """The run's MACs table when it has one, else an in-memory table that measures just the
    entries asked for (the whole table takes about a minute to build)."""
    from supernet.costs import MacTable, TableMismatchError, table_path

    path = table_path(cfg)
    space = SearchSpace.from_config(cfg.space)
    if path.is_file():
        try:
            return MacTable.load(path, space, cfg.exits), str(path)
        except TableMismatchError:
            pass
    return MacTable(space, cfg.exits), "table entries measured now (ptflops)"


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: Any, fmt: torch.memory_format) -> tuple[float, int]:
    """Top-1 accuracy in fp32, without the training's autocast: ``nachos eval`` scores the early-exit
    networks in fp32, and bf16 rounding moves accuracy by about as much as some head-to-head gaps."""
    model.eval()
    hits = torch.zeros((), dtype=torch.int64)
    n = 0
    for xb, yb in loader:
        logits = model(xb.contiguous(memory_format=fmt))[-1]
        hits += (logits.argmax(1) == yb).sum().cpu()
        n += len(yb)
    return (float(hits) / n if n else float("nan")), n


def train_static(cfg: Config, arch: Arch, epochs: int, tag: str, out_dir: str | Path, *,
                 origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``arch`` without exits from scratch with the supernet's recipe; evaluate on val and
    test; write ``<out_dir>/<tag>.json`` (returned) and the checkpoint ``<tag>.pt``."""
    from eval.evaluate import test_order
    from nachos.data import load_splits, make_loader
    from supernet.costs import count_params, device_name, profile_exit_costs
    from supernet.static import StaticEENet

    tc = cfg.train
    out_dir = ensure_dir(out_dir)
    json_path, ckpt_path = out_dir / f"{tag}.json", out_dir / f"{tag}.pt"
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    fmt = memory_format(tc.channels_last, device)
    autocast = autocast_factory(device, tc.amp)
    space = SearchSpace.from_config(cfg.space)
    space.validate(arch)
    fp = _fingerprint(cfg, arch, epochs)
    table, table_source = mac_table(cfg)  # before training: a damaged table must not cost the epochs

    splits = load_splits(cfg)
    mean, std = splits.mean, splits.std
    loader = make_loader(cfg, splits.train_x, splits.train_y, device, train=True, seed=cfg.seed, mean=mean, std=std)
    model = StaticEENet.from_config(cfg.space, cfg.exits, arch, []).to(device).to(memory_format=fmt)

    def batch_loss(x: torch.Tensor, y: torch.Tensor, _step: int) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits = model(x)[-1].float()
        return F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing), logits

    # a finished checkpoint resumes at its last epoch: no step runs and the evaluation below repeats
    info = fit(model, loader, batch_loss, tc=tc, lr=tc.lr, epochs=epochs, warmup_epochs=tc.warmup_epochs,
               ckpt_path=ckpt_path, fingerprint=fp, desc=f"baseline {tag}",
               lr_hint="lower train.lr or raise train.warmup_epochs", fmt=fmt, device=device,
               extra_state={"arch": arch.to_dict(), "config": config_to_dict(cfg)})
    step, seconds, history = info["steps"], info["train_seconds"], info["history"]

    t_eval = time.perf_counter()
    val_loader = make_loader(cfg, splits.val_x, splits.val_y, device, train=False, seed=cfg.seed, mean=mean, std=std)
    order = test_order(splits.test_y, splits.num_classes, cfg.export.test_subset, cfg.seed)
    test_loader = make_loader(cfg, splits.test_x[order], splits.test_y[order], device, train=False, seed=cfg.seed,
                              mean=mean, std=std)
    val_acc, n_val = accuracy(model, val_loader, fmt)
    test_acc, n_test = accuracy(model, test_loader, fmt)
    eval_seconds = time.perf_counter() - t_eval

    macs = table.peak_cost(arch, [])
    params = table.params(arch, [])
    static = StaticEENet.from_config(cfg.space, cfg.exits, arch, []).eval()
    profiled = float(profile_exit_costs(static)[-1])
    result: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "tag": tag, "run": cfg.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "origin": origin or {"kind": "custom", "arch_key": arch.key()},
        "arch": arch.to_dict(), "arch_str": str(arch), "arch_key": arch.key(), "exits": [],
        "epochs": epochs, "steps": step, "train_images": len(splits.train_y),
        "held_out_digest": splits.held_out_digest,  # what fine-tuning from it checks against its export's
        "val_accuracy": val_acc, "val_images": n_val, "test_accuracy": test_acc, "test_images": n_test,
        "test_subset": cfg.export.test_subset, "test_digest": splits.test_digest(order),
        "dataset": cfg.data.name, "macs": float(macs), "macs_profiled": profiled, "macs_source": table_source,
        "params": int(params), "params_counted": count_params(model),
        "train_seconds": seconds, "eval_seconds": eval_seconds, "device": device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "history": history,
        "recipe": recipe(cfg), "fingerprint": fp,
    }
    if (cfg.run_dir / "config.yaml").is_file():
        result["command"] = f"nachos baseline --config {cfg.run_dir / 'config.yaml'} export.baseline_epochs={epochs}"
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    return result


def finished(path: Path, cfg: Config, arch: Arch, epochs: int) -> dict[str, Any] | None:
    """The result at ``path`` when it was trained with this recipe, arch and epochs."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("fingerprint") == _fingerprint(cfg, arch, epochs) else None


def origins(b: dict[str, Any]) -> list[dict[str, Any]]:
    """Each way of choosing networks that picked baseline ``b`` (``add_origin``), first first."""
    first = b.get("origin") or {}
    return [first, *first.get("also", [])]


def add_origin(path: Path, result: dict[str, Any], origin: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``origin`` kept under ``origin["also"]`` (and written back) when another mode
    chose the finished network first: the front, matched and scored modes tag one backbone alike, and
    the report's kind column and commands would otherwise name the first mode only. Origins are told
    apart by kind (and export); a later one of a kind already held adds nothing."""
    first = result.get("origin") or {}
    held = origins(result)
    if any((o.get("kind"), o.get("export")) == (origin.get("kind"), origin.get("export")) for o in held):
        return result
    merged = dict(result, origin=dict(first, also=[*first.get("also", []), origin]) if first else origin)
    atomic_write_text(path, json.dumps(merged, indent=1) + "\n")
    return merged


def default_epochs(run: Config) -> int:
    """``export.baseline_epochs=0``: as long as the run's EENs trained (``eval.analysis.rival_epochs``:
    the supernet's epochs plus any fine-tuning from its weights, or a retrained EEN's own), so that
    the baselines are the like-for-like rivals the report compares them with."""
    from eval.analysis import rival_epochs  # the report's layers sit on top of this module
    from eval.run_folder import load_run

    return rival_epochs(load_run(run, run.run_dir))


def baseline_command(cfg: Config, args: Any) -> int:
    """``nachos baseline``: train the static baselines ``export.baselines`` names (see module doc)."""
    run = run_config(cfg)
    notice = subset_notice(cfg, run)
    if notice:
        print(notice, file=sys.stderr)
    epochs = cfg.export.baseline_epochs or default_epochs(run)
    if epochs < 1:
        raise RunError("the run's train.epochs is 0; set export.baseline_epochs=N")
    given = getattr(args, "export_dirs", None)
    chosen = ([export_backbone(run, d) for d in given] if given
              else choose_baselines(run, cfg.export.baselines, cfg.export.max_baselines))
    if epochs != run.train.epochs:  # a longer or shorter rival sits beside the like-for-like one, not over it
        chosen = [(f"{tag}-e{epochs}", arch, origin) for tag, arch, origin in chosen]
    out_dir = run.run_dir / "baselines"
    if not (run.run_dir / "config.yaml").is_file():  # a run of static networks alone: its report and archive read it
        save_config(run, run.run_dir / "config.yaml")
    print(f"{len(chosen)} static baseline(s) of run {run.name}, {epochs} epochs each, on "
          f"{resolve_device(run.device)} -> {out_dir}/", file=sys.stderr)
    for tag, arch, origin in chosen:
        result = finished(out_dir / f"{tag}.json", run, arch, epochs)
        if result is None:
            result = train_static(run, arch, epochs, tag, out_dir, origin=origin)
        else:
            print(f"{tag}: already trained ({out_dir / (tag + '.json')})", file=sys.stderr)
            result = add_origin(out_dir / f"{tag}.json", result, origin)
        print(f"  {tag}: test accuracy {result['test_accuracy']:.4f}, val {result['val_accuracy']:.4f}, "
              f"{result['macs'] / 1e6:.3f} M MACs, {result['params']:,} params, {result['train_seconds']:.0f} s "
              f"({result['origin']['kind']}: {result['arch_str']})")
    print(f"write the results report with: nachos report --config <config> name={run.name}")
    return 0


__all__ = ["hand_designed_arch", "choose_baselines", "export_backbone", "front_backbones", "run_config",
           "subset_notice", "train_static", "baseline_command"]
