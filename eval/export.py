"""``nachos export``: chosen search solutions as standalone early-exit models.

    nachos export --config configs/cifar10.yaml [export.select=best|all|3|acc>=0.8|macs<=2.7e6|hand]

For each chosen solution of ``<run_dir>/search/pareto.json`` (the admissible Pareto set):
BN statistics recalibrated for that subnet on fixed un-augmented training batches (the very
batches the search used, so the exported model reproduces the search's validation figures),
the static network extracted from the supernet, and written to ``<run_dir>/export/<id>/``:

- ``arch.json``: arch, exits, thresholds, criterion, input format, costs (per-exit cumulative
  MACs, expected / peak / backbone MACs, params, and the MAC convention), validation metrics
  of the exported model next to the search's, source run / checkpoint / config hash, the
  ``StaticEENet`` description, parity checks and the SHA-256 of every file;
- ``model.safetensors``: weights of the plain static network (``load_exported`` rebuilds it
  from the description: no supernet, no checkpoint);
- ``model.torchscript.pt``: ``eval.runtime.EarlyExitModel`` scripted: its ``forward`` makes
  the exit decisions (``torch.jit.load(path)(x) -> (pred, exit_index, logits)``);
- ``onnx/segment_<i>.onnx``, ``onnx/head_<i>.onnx``: one graph per backbone segment and exit
  head, dynamic batch axis, for ``eval.onnx_runner.OnnxEarlyExitRunner``.

A folder is written under a temporary name and renamed when complete, so a crash never leaves
a half export behind; re-exporting the same solution replaces its folder.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eval.onnx_runner import MANIFEST, OnnxEarlyExitRunner, read_manifest, sha256_file, verified_file
from eval.runtime import EarlyExitModel, build_model, script_model
from exits.policies import decide_exits_np
from nachos.config import Config, config_to_dict
from nachos.runtime import RunError, atomic_write_text, ensure_dir, json_digest, replace_dir
from supernet.bn import recalibrate_bn
from supernet.costs import profile_exit_costs
from supernet.space import Arch
from supernet.static import StaticEENet

if TYPE_CHECKING:
    from nachos.data import Splits

FORMAT = "nachos-export"
VERSION = 1
WEIGHTS = "model.safetensors"
TORCHSCRIPT = "model.torchscript.pt"
ONNX_DIR = "onnx"
MAC_CONVENTION = (
    "MACs of convolutions and linear layers for one image (ptflops aten backend, batch 1: one per weight use plus "
    "one per output element for a bias; BN, activations, pooling, SE gate and residual adds count 0). Leaving at "
    "selected exit i costs the backbone up to it plus every selected head up to and including i; the final "
    "classifier costs the whole backbone plus all selected heads (= peak). Expected MACs = exit rates @ those costs.")
Record = dict[str, Any]


# ----------------------------------------------------------------------------- small helpers
def config_hash(cfg: Config) -> str:
    return json_digest(config_to_dict(cfg), compact=True)


def make_hint(target: str, cfg: Config, config_path: str | None) -> str:
    where = f"CONFIG={config_path}" if config_path else "CONFIG=<your config>"
    return f"make {target} {where}" + (f' ARGS="name={cfg.name}"' if cfg.name else "")


def export_root(cfg: Config) -> Path:
    return cfg.run_dir / "export"


# ----------------------------------------------------------------------------- selection
def load_search_result(cfg: Config, config_path: str | None = None) -> tuple[Path, dict[str, Any]]:
    """``<run_dir>/search/pareto.json``, or a RunError naming the command that makes it."""
    path = cfg.run_dir / "search" / "pareto.json"
    if not path.is_file():
        raise RunError(f"no search result at {path}; run the search first: {make_hint('search', cfg, config_path)}")
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("front"), list):
            raise ValueError("no 'front' list")
    except (ValueError, OSError) as err:
        raise RunError(f"search result {path} is damaged ({err}); rerun the search: "
                       f"{make_hint('search', cfg, config_path)}") from None
    return path, payload


_RULE = re.compile(r"^(acc|accuracy|macs|expected_macs)\s*(>=|<=|>|<|=)\s*(\S+)$")


def select_solutions(front: list[Record], select: str) -> list[tuple[int, Record]]:
    """(front index, record) pairs chosen by ``export.select`` (see ``ExportConfig.select``)."""
    s = select.strip().lower().replace(" ", "")
    if not front:
        raise RunError("the search found no admissible solution, so there is nothing to export; relax "
                       "search.min_accuracy / search.max_expected_macs and rerun the search")
    if s == "all":
        return list(enumerate(front))
    if s == "best":
        i = max(range(len(front)), key=lambda k: (front[k]["accuracy"], -front[k]["expected_macs"]))
        return [(i, front[i])]
    if re.fullmatch(r"-?\d+", s):
        i = int(s)
        if not -len(front) <= i < len(front):
            raise RunError(f"export.select={select}: the admissible front has {len(front)} solutions "
                           f"(indices 0..{len(front) - 1}, as listed in pareto.csv)")
        return [(i % len(front), front[i])]
    m = _RULE.match(s)
    if m is None:
        raise RunError(f"export.select={select!r} is not understood; use best, all, an index (0..{len(front) - 1}), "
                       "acc>=X (cheapest with validation accuracy >= X), macs<=X (most accurate with expected "
                       "MACs <= X) or, for nachos export, hand")
    field, op, text = m.groups()
    try:
        value = float(text)
    except ValueError:
        raise RunError(f"export.select={select!r}: {text!r} is not a number") from None
    if field.startswith("acc") and op == ">=":
        if value > 1.0:  # "acc>=80" means percent
            value /= 100.0
        ok = [(i, r) for i, r in enumerate(front) if r["accuracy"] >= value]
        if not ok:
            best = max(r["accuracy"] for r in front)
            raise RunError(f"export.select={select}: no admissible solution reaches validation accuracy {value:g} "
                           f"(the best has {best:.4f})")
        return [min(ok, key=lambda p: (p[1]["expected_macs"], -p[1]["accuracy"]))]
    if field.endswith("macs") and op == "<=":
        ok = [(i, r) for i, r in enumerate(front) if r["expected_macs"] <= value]
        if not ok:
            cheapest = min(r["expected_macs"] for r in front)
            raise RunError(f"export.select={select}: no admissible solution has expected MACs <= {value:.4g} "
                           f"(the cheapest has {cheapest:.4g})")
        return [max(ok, key=lambda p: (p[1]["accuracy"], -p[1]["expected_macs"]))]
    raise RunError(f"export.select={select!r}: use acc>=X (cheapest above an accuracy) or macs<=X (most accurate "
                   "below a MAC budget)")


def export_id(index: int | None, rec: Record) -> str:
    if "name" in rec:
        return str(rec["name"])
    if "id" in rec:
        return f"{rec.get('algorithm', 'search')}-{int(rec['id']):04d}"
    return f"front-{index:03d}"


def exact_thresholds(rec: Record, cfg: Config) -> tuple[list[float], str]:
    """The thresholds search compared with: its grid values, which pareto.json rounds to 6 digits.

    A rounded value converts to another float32 than the grid value, and a sample whose score
    lies between the two would leave at a different exit than it did in the search."""
    from search.scoring import threshold_grid

    recorded = [float(t) for t in rec["thresholds"]]
    idx = rec.get("threshold_idx")
    s = cfg.search
    grid = threshold_grid(s.threshold_min, s.threshold_max, s.threshold_steps)
    if idx is not None and len(idx) == len(recorded) and all(0 <= j < len(grid) for j in idx):
        exact = [float(grid[j]) for j in idx]
        if all(abs(a - b) <= 5e-6 for a, b in zip(exact, recorded)):
            return exact, "search grid"
    return recorded, "pareto.json"


# ----------------------------------------------------------------------------- loading
def load_exported(path: str | Path, device: torch.device | str = "cpu") -> EarlyExitModel:
    """The early-exit model of an export folder (or its arch.json), rebuilt without the supernet.

    Missing or damaged files raise RunError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    folder, m = read_manifest(path)
    weights = verified_file(folder, m, m.get("weights", WEIGHTS))
    try:
        state = load_safetensors(weights.read_bytes())
    except (SafetensorError, ValueError, OSError, RuntimeError) as err:
        raise RunError(f"export file {weights} is damaged ({type(err).__name__}: {err}); "
                       "re-export with make export CONFIG=...") from None
    inp = m.get("input", {})
    try:
        model = build_model(m["description"], m["thresholds"], m["criterion"], inp.get("mean"), inp.get("std"))
    except (KeyError, ValueError, TypeError) as err:
        raise RunError(f"export file {folder / MANIFEST} is damaged: cannot rebuild the network ({err}); "
                       "re-export with make export CONFIG=...") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RunError(f"export file {weights} does not fit the network of {folder / MANIFEST} "
                       f"({str(err).splitlines()[0]}); re-export with make export CONFIG=...") from None
    return model.to(device).eval()


def load_torchscript(path: str | Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """The export's scripted early-exit model; RunError naming the file when missing or damaged."""
    folder, m = read_manifest(path)
    if not m.get("torchscript"):
        raise RunError(f"the export in {folder} has no TorchScript file (exported with export.torchscript=false)")
    file = verified_file(folder, m, m["torchscript"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(file), map_location=device).eval()
    except Exception as err:  # torch raises RuntimeError or zip errors for a truncated archive
        raise RunError(f"export file {file} is damaged ({type(err).__name__}); re-export with make export "
                       "CONFIG=...") from None


# ----------------------------------------------------------------------------- writing
def _export_onnx(module: torch.nn.Module, shape: tuple[int, ...], path: Path, opset: int) -> None:
    dummy = torch.zeros(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: the dynamo one needs onnxscript and adds nothing for plain convs
        torch.onnx.export(module, (dummy,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=opset, dynamo=False)


def _state_bytes(net: StaticEENet) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    # one metadata entry: safetensors writes a metadata map in a random order, and the file's digest
    # (recorded in arch.json, part of fine-tuning fingerprints) must depend on the weights alone
    return save(state, metadata={"format": "pt"})


def check_images(cfg: Config, splits: Splits, n: int = 64) -> torch.Tensor:
    """``n`` random validation images, normalised, for the parity checks (splits may be stored sorted
    by class: the first ``n`` would all be one class and rarely leave early)."""
    from nachos.data import derived_generator, make_loader

    pick = torch.randperm(len(splits.val_y), generator=derived_generator(cfg.seed, "export-check"))[:n]
    loader = make_loader(cfg, splits.val_x[pick], splits.val_y[pick], "cpu", train=False, seed=cfg.seed,
                         mean=splits.mean, std=splits.std)
    return torch.cat([x for x, _ in loader])


def parity_problems(checks: dict[str, Any], tolerance: float = 1e-3) -> list[str]:
    """What the parity checks found wrong with a written form: logits further than ``tolerance`` from
    the PyTorch model's, or other exit decisions or predictions on any check image."""
    out = [f"{k} = {v:.2g}" for k, v in checks.items() if k.endswith("_max_abs_diff") and v > tolerance]
    return out + [f"{k} = {v:.4f}" for k, v in checks.items() if k.endswith(("_same_exits", "_same_predictions"))
                  and v < 1.0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; digits that are no pid: leave it be
        return True
    return True


def sweep_staging(staging_root: Path) -> None:
    """Clear what exports killed outright (SIGKILL, power loss) left in ``staging_root``: folders
    ``<export>-<pid>`` and replace_dir's ``<export>-<pid>.old`` of processes no longer running.
    A kill between replace_dir's two renames leaves the export itself missing; its old copy goes back
    (as replace_dir does on Ctrl-C) instead of being deleted."""
    for entry in sorted(staging_root.iterdir()):
        name, _, pid = entry.name.removesuffix(".old").rpartition("-")
        if not entry.is_dir() or not name or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        dest = staging_root.parent / name
        if entry.name.endswith(".old") and not dest.exists():
            try:
                os.replace(entry, dest)
            except FileNotFoundError:  # another export swept it first
                continue
            print(f"{dest}: restored from {entry} (an export was killed while swapping it)", file=sys.stderr)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def write_export(folder: Path, model: EarlyExitModel, manifest: dict[str, Any], *, torchscript: bool, onnx: bool,
                 opset: int, check_x: torch.Tensor | None = None) -> Path:
    """Write weights, TorchScript, ONNX and arch.json into ``folder`` (replaced when complete).

    With ``check_x`` (normalised images), the TorchScript file and the ONNX runner are run on it
    and their largest logit difference and exit-decision agreement go to ``manifest['checks']``."""
    folder = Path(folder)
    # beside the exports, not among them: a job killed mid-export leaves its staging folder behind,
    # and eval, the index, the report and the archive take every folder of the export root for one
    staging_root = ensure_dir(folder.parent / ".staging")
    sweep_staging(staging_root)
    staging = staging_root / f"{folder.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        model = model.cpu().eval()
        net = model.static_net()
        files: list[str] = [WEIGHTS]
        (staging / WEIGHTS).write_bytes(_state_bytes(net))
        manifest = dict(manifest, weights=WEIGHTS, torchscript=None)
        if torchscript:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(script_model(model), str(staging / TORCHSCRIPT))
            manifest["torchscript"] = TORCHSCRIPT
            files.append(TORCHSCRIPT)
        if onnx:
            (staging / ONNX_DIR).mkdir()
            segs, heads = [], []
            for i, (seg, shape) in enumerate(zip(net.segments, net.segment_input_shapes)):
                segs.append(f"{ONNX_DIR}/segment_{i}.onnx")
                _export_onnx(seg, shape, staging / segs[-1], opset)
            for i, (head, shape) in enumerate(zip(net.heads, net.head_input_shapes)):
                heads.append(f"{ONNX_DIR}/head_{i}.onnx")
                _export_onnx(head, shape, staging / heads[-1], opset)
            manifest["onnx"] = {"segments": segs, "heads": heads, "opset": opset, "input_name": "x",
                                "output_name": "y", "dynamic_axes": {"x": [0], "y": [0]}}
            files += segs + heads
        manifest["files"] = {name: sha256_file(staging / name) for name in files}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        if check_x is not None:
            manifest["checks"] = parity_checks(staging, model, check_x)
            problems = parity_problems(manifest["checks"])
            if problems:
                print(f"WARNING: {folder.name}: a written form disagrees with the PyTorch model on "
                      f"{len(check_x)} validation images ({'; '.join(problems)}); check it before deploying "
                      "(arch.json `checks`), or export again with that form off", file=sys.stderr)
            atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


@torch.no_grad()
def parity_checks(folder: Path, model: EarlyExitModel, x: torch.Tensor) -> dict[str, Any]:
    """Largest logit difference and exit-decision agreement of each written form vs ``model``."""
    x = x.cpu()
    ref_all = model.run_all(x)
    ref_pred, ref_exit, _ = model(x)
    loaded = load_exported(folder)
    out: dict[str, Any] = {"images": len(x)}
    out["safetensors_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(loaded.run_all(x), ref_all))
    _, m = read_manifest(folder)
    if m.get("torchscript"):
        ts = load_torchscript(folder)
        pred, ex, _ = ts(x)
        out["torchscript_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(ts.run_all(x), ref_all))
        out["torchscript_same_exits"] = float((ex == ref_exit).float().mean())
        out["torchscript_same_predictions"] = float((pred == ref_pred).float().mean())
    if m.get("onnx"):
        runner = OnnxEarlyExitRunner(folder)
        xs = x.numpy()
        out["onnx_max_abs_diff"] = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(runner.run_all(xs), ref_all))
        pred, ex, _ = runner.predict(xs)
        out["onnx_same_exits"] = float((ex == ref_exit.numpy()).mean())
        out["onnx_same_predictions"] = float((pred == ref_pred.numpy()).mean())
    return out


# ----------------------------------------------------------------------------- exporting
@torch.no_grad()
def run_early_exit(model: EarlyExitModel, loader: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pred, exit index, class logits of the exit taken, labels) over a loader of (x, y)."""
    preds, exits, logits, labels = [], [], [], []
    for x, y in loader:
        p, e, lg = model(x)
        preds.append(p.cpu())
        exits.append(e.cpu())
        logits.append(lg.float().cpu())
        labels.append(y.cpu())
    return (torch.cat(preds).numpy(), torch.cat(exits).numpy(), torch.cat(logits).numpy(), torch.cat(labels).numpy())


@dataclass
class Exporter:
    """Everything that is shared by the solutions exported in one run: supernet, data, costs."""

    cfg: Config
    config_path: str | None = None
    # the hand-designed network needs only the supernet: its exits are chosen here, not searched
    needs_search: bool = True

    def __post_init__(self) -> None:
        from search.backend import SupernetBackend

        self.backend = SupernetBackend(self.cfg, self.config_path)
        self.space = self.backend.space
        self.criterion = self.cfg.exits.criterion
        self.ckpt_sha256 = sha256_file(self.backend.ckpt_path)
        self.search_path: Path | None = None
        self.search: dict[str, Any] = {"front": []}
        if not self.needs_search and not (self.cfg.run_dir / "search" / "pareto.json").is_file():
            return
        self.search_path, self.search = load_search_result(self.cfg, self.config_path)
        if self.search.get("metric", "macs") != self.cfg.search.metric:
            print(f"note: the search optimised {self.search.get('metric')}, this config says "
                  f"search.metric={self.cfg.search.metric}", file=sys.stderr)
        ckpt, res = self.backend.ckpt_path, self.search_path
        if ckpt.stat().st_mtime > res.stat().st_mtime:
            print(f"warning: {ckpt} is newer than {res}: the supernet changed after the search, so the search's "
                  "figures may not hold for the exported models; rerun the search first", file=sys.stderr)

    def calibration_batches(self) -> list[torch.Tensor]:
        """The search's BN batches (same seed, same images), or as many as export.bn_calib_batches asks."""
        from nachos.data import calibration_batches

        n_batches = self.cfg.export.bn_calib_batches or self.cfg.search.bn_calib_batches
        if n_batches == self.cfg.search.bn_calib_batches:
            return self.backend.calibration_batches()
        s = self.backend.splits
        return calibration_batches(self.cfg, s.train_x, s.train_y, s.mean, s.std, self.backend.device, n_batches)

    def build(self, rec: Record) -> tuple[EarlyExitModel, list[float], str]:
        """The solution's early-exit model, BN statistics recalibrated for its subnet (on CPU)."""
        arch = self.space.validate(Arch.from_dict(rec["arch"]))
        exits = [int(e) for e in rec["exits"]]
        thresholds, source = exact_thresholds(rec, self.cfg)
        if source != "search grid":
            print(f"note: the thresholds {rec['thresholds']} are not on this config's search.threshold_* grid; using "
                  "them as recorded (6 digits), so a sample right at a threshold may exit differently than in the "
                  "search", file=sys.stderr)
        model = self.backend.model
        model.set_active(arch)
        calib = self.calibration_batches()
        recalibrate_bn(model, calib, len(calib))
        model.eval()
        net = model.extract(arch, exits).cpu().eval()
        s = self.backend.splits
        return EarlyExitModel(net, thresholds, self.criterion, s.mean, s.std).eval(), thresholds, source

    def hand_record(self) -> Record:
        """The space's hand-designed network (or ``export.hand_arch``) as a solution record: the
        cheapest exits and thresholds (every subset of its exit positions) whose validation accuracy
        from the supernet's weights is at most ``export.max_accuracy_drop`` below its own final
        classifier's, scored as the search scores (BN recalibration, prediction cache)."""
        from eval.baselines import hand_designed_arch
        from eval.evaluate import search_grid
        from search.scoring import cheapest_exit_configuration

        named = self.cfg.export.hand_arch.strip()
        arch = hand_designed_arch(self.space)
        if named:  # only the user's string can be wrong here; the hand-designed rule always fits its space
            try:
                arch = self.space.parse_arch(named)
            except ValueError as err:
                raise RunError(f"export.hand_arch: {err}; copy an arch from a report or log of this space") from None
        available, fixed = self.space.available_exits(arch), sorted(set(self.cfg.export.hand_exits))
        if not set(fixed) <= set(available):
            raise RunError(f"export.hand_exits={fixed}: the network {arch} has exit positions "
                           f"{list(available)} only; pick among them, or leave export.hand_exits empty")
        cache = self.backend.prediction_cache(arch)
        final = float(cache.correct[-1].mean())
        best = cheapest_exit_configuration(
            cache, fixed or available, lambda ex: self.backend.exit_macs(arch, ex),
            search_grid(self.cfg), self.criterion, final - self.cfg.export.max_accuracy_drop, every_subset=not fixed)
        exits = tuple(best["exits"])
        counts = np.asarray(best["counts"], dtype=np.float64)
        name = ("arch-" + arch.key()[:6] if named else "hand") + "-exits" + "".join(f"-{p}" for p in fixed)
        return {"name": name, "algorithm": "hand", "arch": arch.to_dict(), "exits": best["exits"],
                "thresholds": best["thresholds"], "threshold_idx": best["threshold_idx"],
                "accuracy": best["accuracy"], "expected_macs": best["expected_cost"],
                "peak_macs": float(self.backend.exit_macs(arch, exits)[-1]),
                "params": int(self.backend.params(arch, exits)), "exit_counts": best["counts"],
                "exit_rates": (counts / counts.sum()).tolist(), "final_classifier_accuracy": final,
                "max_accuracy_drop": self.cfg.export.max_accuracy_drop}

    @staticmethod
    def validation_figures(model: EarlyExitModel, loader: Any,
                           exit_costs: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """A manifest's ``validation`` figures on ``loader`` (``nachos finetune`` records its exports'
        with it too), and each image's exit and label."""
        from eval.metrics import exit_statistics, expected_cost

        pred, ex, _, labels = run_early_exit(model, loader)
        stats = exit_statistics(ex, pred, labels, model.num_exits)
        return {"split": "val", "images": int(len(labels)), "accuracy": float((pred == labels).mean()),
                "exit_counts": stats["counts"], "exit_rates": stats["rates"], "exit_accuracy": stats["accuracy"],
                "expected_macs": expected_cost(stats["counts"], exit_costs)}, ex, labels

    def validation(self, model: EarlyExitModel, rec: Record, exit_costs: np.ndarray) -> dict[str, Any]:
        out, ex, labels = self.validation_figures(model.to(self.backend.device), self.backend.val_loader(), exit_costs)
        model.cpu()
        out["search"] = {k: rec.get(k) for k in ("accuracy", "expected_macs", "peak_macs", "params", "exit_rates",
                                                 "exit_counts")}
        # the search's own per-sample decisions, from its prediction cache on the same split
        arch = Arch.from_dict(rec["arch"])
        cache = self.backend.prediction_cache(arch)
        if cache.num_samples == len(labels) and np.array_equal(cache.labels, labels):
            ids = [int(e) for e in rec["exits"]]
            thr = np.asarray(model.threshold_values, dtype=np.float32)
            search_exit = decide_exits_np(cache.conf[ids], thr, self.criterion)
            out["same_exits_as_search"] = float((search_exit == ex).mean())
        return out

    def export(self, index: int | None, rec: Record) -> Path:
        cfg = self.cfg
        t0 = time.perf_counter()
        model, thresholds, thr_source = self.build(rec)
        arch = model.description()["arch"]
        arch_obj = Arch.from_dict(arch)
        exits = [int(e) for e in rec["exits"]]
        exit_costs = np.asarray(self.backend.exit_macs(arch_obj, tuple(exits)), dtype=np.float64)
        backbone = float(self.backend.exit_macs(arch_obj, ())[-1])
        params = int(self.backend.params(arch_obj, tuple(exits)))
        profiled = profile_exit_costs(model.static_net())
        val = self.validation(model, rec, exit_costs)
        s = self.backend.splits
        eid = export_id(index, rec)
        table = getattr(self.backend, "costs", None)  # supernet.costs.MacTable (older backends: a ptflops stand-in)
        table_file = getattr(table, "path", None)
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "id": eid,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "arch": arch, "arch_str": str(arch_obj), "arch_key": arch_obj.key(), "exits": exits,
            "thresholds": thresholds, "threshold_idx": rec.get("threshold_idx"), "threshold_source": thr_source,
            "criterion": self.criterion, "num_classes": self.space.num_classes, "classes": list(s.classes),
            "input": {"shape": list(model.input_shape), "dtype": "float32", "layout": "NCHW",
                      "mean": list(s.mean), "std": list(s.std),
                      "preprocess": "x = (uint8_image / 255 - mean) / std, per channel"},
            "expected_macs": val["expected_macs"], "peak_macs": float(exit_costs[-1]), "params": params,
            "macs": {"convention": MAC_CONVENTION, "source": "table" if table_file else "ptflops",
                     "table": str(table_file) if table_file else None,
                     "exit_costs": exit_costs.tolist(), "backbone": backbone,
                     "profiled_exit_costs": profiled.tolist()},
            "validation": val,
            "source": {"run": str(cfg.run_dir), "name": cfg.name, "config_path": self.config_path,
                       "config_hash": config_hash(cfg), "space_hash": self.space.space_hash(),
                       "checkpoint": str(self.backend.ckpt_path), "checkpoint_sha256": self.ckpt_sha256,
                       "search": self.search_path and str(self.search_path), "algorithm": rec.get("algorithm"),
                       "candidate_id": rec.get("id"), "front_index": index,
                       "bn_calib_batches": len(self.calibration_batches()), "seed": cfg.seed,
                       "held_out_digest": s.held_out_digest,
                       "torch": torch.__version__},
            "config": config_to_dict(cfg),
            "description": model.description(),
        }
        check_x = check_images(self.cfg, self.backend.splits)
        folder = write_export(export_root(cfg) / eid, model, manifest, torchscript=cfg.export.torchscript,
                              onnx=cfg.export.onnx, opset=cfg.export.onnx_opset, check_x=check_x)
        _warn_on_mismatch(folder, val, rec)
        print(f"exported {eid} ({time.perf_counter() - t0:.1f} s) -> {folder}")
        return folder


def _warn_on_mismatch(folder: Path, val: dict[str, Any], rec: Record) -> None:
    n = max(val["images"], 1)
    if abs(val["accuracy"] - rec["accuracy"]) > 1.5 / n or not np.isclose(val["expected_macs"], rec["expected_macs"],
                                                                          rtol=1e-3):
        print(f"warning: {folder.name}: exported model on val: accuracy {val['accuracy']:.4f}, expected MACs "
              f"{val['expected_macs']:.4g}; the search recorded {rec['accuracy']:.4f}, {rec['expected_macs']:.4g} "
              "(different checkpoint, data or BN batches?)", file=sys.stderr)


def write_index(cfg: Config) -> Path:
    """``<run_dir>/export/index.json``: one line per export folder, for people and ``make eval``."""
    root = export_root(cfg)
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()):
        try:
            _, m = read_manifest(folder)
        except RunError:
            continue
        rows.append({"id": folder.name, "accuracy_val": m["validation"]["accuracy"],
                     "expected_macs_val": m["expected_macs"], "peak_macs": m["peak_macs"], "params": m["params"],
                     "exits": m["exits"], "thresholds": m["thresholds"], "arch": m["arch_str"]})
    return atomic_write_text(root / "index.json", json.dumps(rows, indent=1) + "\n")


def run_export(cfg: Config, config_path: str | None = None, select: str | None = None) -> list[Path]:
    select = select or cfg.export.select
    hand = select.strip().lower() == "hand"
    for key, value in (("hand_exits", cfg.export.hand_exits), ("hand_arch", cfg.export.hand_arch)):
        if value and not hand:
            raise RunError(f"export.{key}={value} applies to export.select=hand only; add export.select=hand, or "
                           f"drop export.{key} to export the search's solutions ({select})")
    exporter = Exporter(cfg, config_path, needs_search=not hand)
    if hand:
        folders = [exporter.export(None, exporter.hand_record())]
    else:
        folders = [exporter.export(i, rec) for i, rec in select_solutions(exporter.search["front"], select)]
    write_index(cfg)
    return folders


def export_command(cfg: Config, args: Any) -> int:
    config_path = getattr(args, "config", None)
    folders = run_export(cfg, config_path)
    for folder in folders:
        _, m = read_manifest(folder)
        v, checks = m["validation"], m.get("checks", {})
        print(f"  {folder.name}: val acc {v['accuracy']:.4f} (search {v['search']['accuracy']:.4f})  expected MACs "
              f"{m['expected_macs'] / 1e6:.3f} M  peak {m['peak_macs'] / 1e6:.3f} M  exits {m['exits']} "
              f"rates {[round(r, 3) for r in v['exit_rates']]}"
              + (f"  onnx diff {checks['onnx_max_abs_diff']:.1e}" if "onnx_max_abs_diff" in checks else ""))
    print(f"evaluate on the test split with: {make_hint('eval', cfg, config_path)}")
    return 0


__all__ = ["load_exported", "load_torchscript", "run_export", "select_solutions", "export_command",
           "write_export", "Exporter"]
