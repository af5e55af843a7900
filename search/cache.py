"""Per-backbone prediction caches: computed once from inherited weights, kept on disk.

For one arch: BN statistics re-estimated on fixed un-augmented training batches, then ONE
forward pass over the validation split with every candidate exit attached. Per position and
for the final classifier we keep the predicted class (int16) and the exit confidence of the
configured criterion (float32); positions the arch lacks hold pred -1 and conf 0.

Files live in ``<run_dir>/search/cache/<arch key>.npz`` and carry a fingerprint of everything
that shaped them (checkpoint bytes, validation and calibration images, criterion, settings): a file
with another fingerprint is recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from exits.policies import class_logits, exit_confidence
from nachos.runtime import RunError, atomic_write_bytes, ensure_dir
from search.scoring import BackboneCache
from supernet.bn import recalibrate_bn
from supernet.space import Arch


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def read_cache(folder: Path, arch: Arch, fp: str | None = None) -> BackboneCache | None:
    """``arch``'s cache file in ``folder``, or None when it is missing, damaged, of another arch or
    (given ``fp``) of another fingerprint. Readers after the search (reports, baselines) pass no
    fingerprint: checking it needs the supernet, and the search that wrote the file checked it."""
    path = folder / f"{arch.key()}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if (fp is not None and str(z["fingerprint"]) != fp) or str(z["arch"]) != arch.to_json():
                return None
            return BackboneCache(arch.key(), z["pred"].astype(np.int16), z["conf"].astype(np.float32),
                                 z["labels"].astype(np.int64))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # truncated or foreign: recompute
        return None


class CacheStore:
    """npz files keyed by arch, valid only under one fingerprint."""

    def __init__(self, folder: Path, fp: str) -> None:
        self.folder = ensure_dir(folder)
        self.fp = fp

    def path(self, arch: Arch) -> Path:
        return self.folder / f"{arch.key()}.npz"

    def load(self, arch: Arch) -> BackboneCache | None:
        return read_cache(self.folder, arch, self.fp)

    def save(self, arch: Arch, cache: BackboneCache) -> Path:
        buf = io.BytesIO()
        np.savez(buf, pred=cache.pred, conf=cache.conf, labels=cache.labels, fingerprint=np.array(self.fp),
                 arch=np.array(arch.to_json()))
        return atomic_write_bytes(self.path(arch), buf.getvalue())


@torch.no_grad()
def compute_cache(model: nn.Module, arch: Arch, calib: list[torch.Tensor],
                  val: Iterable[tuple[torch.Tensor, torch.Tensor]], criterion: str,
                  checkpoint: Path | None = None) -> BackboneCache:
    """BN recalibration of ``arch`` on ``calib``, then one validation pass with every exit.
    Non-finite logits raise a ``RunError`` naming ``checkpoint``, the weights they came from."""
    model.set_active(arch)
    recalibrate_bn(model, calib, len(calib))
    model.eval()
    preds: list[list[torch.Tensor]] = []
    confs: list[list[torch.Tensor]] = []
    labels: list[torch.Tensor] = []
    for x, y in val:
        outs = model(x)
        p_rows, c_rows = [], []
        for i, o in enumerate(outs):
            if o is None:
                p_rows.append(torch.full((len(x),), -1, dtype=torch.int16))
                c_rows.append(torch.zeros(len(x), dtype=torch.float32))
                continue
            # NaN confidences would be scored as leaving at the first exit (searchsorted puts them above
            # every threshold) while the decision rule never lets them leave: no score of them is right
            if not torch.isfinite(o).all():
                weights = f"supernet checkpoint {checkpoint}" if checkpoint else "the supernet"
                raise RunError(f"{weights} gives non-finite logits on {arch.key()}: its training diverged; "
                               "retrain the supernet (a lower train.lr) or search another checkpoint "
                               "(search.checkpoint=...)")
            # the final classifier has no confidence column, and no decision is taken on it
            crit = "softmax" if i == len(outs) - 1 and criterion == "learned" else criterion
            p_rows.append(class_logits(o, crit).argmax(-1).to(torch.int16).cpu())
            c_rows.append(exit_confidence(o, crit).float().cpu())
        preds.append(p_rows)
        confs.append(c_rows)
        labels.append(y.cpu())
    pred = np.stack([torch.cat([b[i] for b in preds]).numpy() for i in range(len(preds[0]))])
    conf = np.stack([torch.cat([b[i] for b in confs]).numpy() for i in range(len(confs[0]))])
    return BackboneCache(arch.key(), pred, conf, torch.cat(labels).numpy().astype(np.int64))


class Timer:
    """Seconds per computed backbone, for the run summary."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __enter__(self) -> Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds.append(time.perf_counter() - self._t)
