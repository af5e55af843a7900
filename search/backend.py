"""The search's view of the trained supernet and of the cost table.

``SupernetBackend`` checks the checkpoint before any work (missing, other search space, other
exit heads: a ``RunError`` naming the command that fixes it), and computes prediction caches
lazily, so a resumed search whose caches are all on disk never runs the network.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nachos.config import Config, saved_differences
from nachos.data import calibration_batches, load_splits, make_loader, tensor_digest
from nachos.runtime import RunError, json_digest, resolve_device
from search.cache import CacheStore, Timer, bytes_digest, compute_cache
from search.scoring import BackboneCache
from supernet.space import Arch, SearchSpace
from supernet.static import HeadSettings


def fix_supernet(cfg: Config, config_path: str | None) -> str:
    where = f"CONFIG={config_path}" if config_path else "CONFIG=<your config>"
    return f"make supernet {where}" + (f' ARGS="name={cfg.name}"' if cfg.name else "")


def checkpoint_path(cfg: Config) -> Path:
    if cfg.search.checkpoint:
        return Path(cfg.search.checkpoint)
    best = cfg.run_dir / "best.pt"
    return best if best.is_file() else cfg.run_dir / "last.pt"


def load_checkpoint(cfg: Config, space: SearchSpace, config_path: str | None) -> tuple[Path, dict[str, Any]]:
    path, ckpt, _ = read_checkpoint(cfg, space, config_path)
    return path, ckpt


def read_checkpoint(cfg: Config, space: SearchSpace,
                    config_path: str | None) -> tuple[Path, dict[str, Any], str]:
    """``load_checkpoint`` plus the digest of the bytes it loaded."""
    path = checkpoint_path(cfg)
    if not path.is_file():
        raise RunError(f"no supernet checkpoint at {path}; train the supernet first: {fix_supernet(cfg, config_path)}"
                       " (or point search.checkpoint=... at one)")
    try:
        # one read for the weights and their digest: a supernet run still training may replace best.pt
        # between two reads, and caches of the old weights must not carry the new file's digest
        data = path.read_bytes()
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files raise many kinds of errors
        raise RunError(f"cannot read supernet checkpoint {path} ({type(err).__name__}: {err}); "
                       f"retrain it: {fix_supernet(cfg, config_path)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RunError(f"{path} is not a supernet checkpoint (no 'model' entry); "
                       f"retrain: {fix_supernet(cfg, config_path)}")
    theirs, ours = ckpt.get("space_hash"), space.space_hash()
    if theirs != ours:
        raise RunError(f"supernet checkpoint {path} was trained on search space {theirs}, but this config's space is "
                       f"{ours}; give the space settings it was trained with (its {path.parent / 'config.yaml'}: "
                       "the same config file and key=value overrides), or train a supernet for this space: "
                       f"{fix_supernet(cfg, config_path)}")
    leak = saved_differences(ckpt.get("config"), cfg, SPLIT_KEYS)
    if leak:
        theirs = " ".join(f"{k}={a}" for k, a, _ in leak)
        ours = " ".join(f"{k}={b}" for k, _, b in leak)
        raise RunError(f"supernet checkpoint {path} held out the validation split of {theirs}, but this config draws "
                       f"it with {ours}: most of those images trained the supernet, so its scores would be inflated; "
                       f"pass {theirs} (its {path.parent / 'config.yaml'}), or train a supernet with these settings: "
                       f"{fix_supernet(cfg, config_path)}")
    return path, ckpt, bytes_digest(data)


# The settings that draw the validation split (nachos.data.split_indices); the supernet trained on
# the rest, so scoring it on a split drawn otherwise would score it on its own training images.
# data.train_subset / data.val_subset only thin the two sides, which keeps them disjoint.
SPLIT_KEYS = ("seed", "data.name", "data.val_fraction")


def _heads_mismatch(cfg: Config, path: Path, config_path: str | None, detail: str) -> str:
    return (f"supernet checkpoint {path} does not fit this config's exit heads ({detail}); use the exits "
            f"settings it was trained with (its {path.parent / 'config.yaml'}) or retrain: "
            f"{fix_supernet(cfg, config_path)}")


def build_supernet(cfg: Config, ckpt: dict[str, Any], path: Path, config_path: str | None) -> torch.nn.Module:
    """The config's supernet holding the checkpoint's weights (on CPU); heads that do not fit
    raise a ``RunError`` naming the settings the checkpoint was trained with."""
    from supernet.network import create_supernet, saved_kernel_transform

    # the weights, not this config, say whether the depthwise kernels carry transforms
    model = create_supernet(cfg, kernel_transform=saved_kernel_transform(ckpt))
    saved = ckpt.get("config", {}).get("exits")
    trained = HeadSettings.from_exits(saved) if saved else None
    # max_map changes what a head computes, not its weights' shapes: only this check catches it
    if trained is not None and trained != model.head_settings:
        raise RunError(_heads_mismatch(cfg, path, config_path, f"trained with {trained.to_dict()}, "
                                       f"this config asks for {model.head_settings.to_dict()}"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise RunError(_heads_mismatch(cfg, path, config_path, str(err).splitlines()[0])) from None
    return model


def load_cost_table(cfg: Config, space: SearchSpace, metric: str, config_path: str | None) -> Any:
    """The run's ``MacTable`` for ``metric``; another space or head design raises
    ``TableMismatchError`` with the rebuild command. A missing MACs table is built (about a
    minute, once per run folder: the search's cost checks touch most of its entries anyway);
    latency must be measured on purpose on the target device, so a missing one is an error."""
    from supernet.costs import MacTable, table_path

    device = resolve_device(cfg.device)
    path = table_path(cfg, metric, device)
    if metric == "latency" and not path.is_file():
        raise RunError(f"no latency table at {path}; measure one on this device first: nachos macs build --metric "
                       f"latency --config {config_path or '<your config>'} name={cfg.name}")
    if not path.is_file():
        print(f"no MACs table at {path} yet: building it (once per run folder)", file=sys.stderr, flush=True)
    return MacTable.load_or_build(space, cfg.exits, path, metric, device=device, progress=sys.stderr.isatty())


class SupernetBackend:
    """Prediction caches from the supernet checkpoint; costs from the run's cost tables."""

    def __init__(self, cfg: Config, config_path: str | None = None, cache_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.space = SearchSpace.from_config(cfg.space)
        self.ckpt_path, ckpt, self._ckpt_digest = read_checkpoint(cfg, self.space, config_path)
        self.device = resolve_device(cfg.device)
        self.criterion = cfg.exits.criterion
        self.model = self._build_model(ckpt, config_path)
        held_out = ckpt.get("held_out_digest")
        del ckpt
        self.timer = Timer()
        self._splits: Any = None
        self._calib: list[torch.Tensor] | None = None
        self.splits.check_held_out(held_out, self.ckpt_path, "its scores would count images the supernet trained on",
                                   "Search with the data it was trained on, or train a supernet on this data: "
                                   f"{fix_supernet(cfg, config_path)}")
        self.store = CacheStore(cache_dir or cfg.run_dir / "search" / "cache", self._fingerprint())
        self.costs = load_cost_table(cfg, self.space, "macs", config_path)
        self.latency_table = (load_cost_table(cfg, self.space, "latency", config_path)
                              if cfg.search.metric == "latency" else None)

    def _build_model(self, ckpt: dict[str, Any], config_path: str | None) -> torch.nn.Module:
        return build_supernet(self.cfg, ckpt, self.ckpt_path, config_path).to(self.device).eval()

    @property
    def scores_id(self) -> str:
        """What every score depends on: the checkpoint's bytes, the validation split, the BN calibration
        images, the scoring settings."""
        return self.store.fp

    def _fingerprint(self) -> str:
        splits = self.splits
        return json_digest({
            "checkpoint": self._ckpt_digest, "val": tensor_digest(splits.val_x, splits.val_y),
            # data.train_subset picks these images without touching the validation split
            "calibration": tensor_digest(*self.calibration_batches()),
            "criterion": self.criterion, "bn_calib_batches": self.cfg.search.bn_calib_batches,
            "batch_size": self.cfg.data.batch_size, "seed": self.cfg.seed, "device": self.device.type,
        }, length=20)

    @property
    def splits(self) -> Any:
        if self._splits is None:
            self._splits = load_splits(self.cfg)
        return self._splits

    def calibration_batches(self) -> list[torch.Tensor]:
        """Fixed un-augmented training batches at the training batch size, the same for every arch."""
        if self._calib is None:
            s = self.splits
            self._calib = calibration_batches(self.cfg, s.train_x, s.train_y, s.mean, s.std, self.device,
                                              self.cfg.search.bn_calib_batches)
        return self._calib

    def val_loader(self) -> Any:
        s = self.splits
        return make_loader(self.cfg, s.val_x, s.val_y, self.device, train=False, seed=self.cfg.seed,
                           mean=s.mean, std=s.std)

    # ------------------------------------------------------------------ Backend protocol
    def prediction_cache(self, arch: Arch) -> BackboneCache:
        cached = self.store.load(arch)
        if cached is not None:
            return cached
        with self.timer:
            cache = compute_cache(self.model, arch, self.calibration_batches(), self.val_loader(), self.criterion,
                                  self.ckpt_path)
        self.store.save(arch, cache)
        return cache

    def exit_macs(self, arch: Arch, exits: tuple[int, ...]) -> np.ndarray:
        return np.asarray(self.costs.exit_costs(arch, list(exits)), dtype=np.float64)

    def exit_latency(self, arch: Arch, exits: tuple[int, ...]) -> np.ndarray | None:
        if self.latency_table is None:
            return None
        return np.asarray(self.latency_table.exit_costs(arch, list(exits)), dtype=np.float64)

    def params(self, arch: Arch, exits: tuple[int, ...]) -> int:
        return int(self.costs.params(arch, list(exits)))

