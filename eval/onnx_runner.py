"""Early-exit inference on the exported ONNX graphs with onnxruntime, segment by segment.

An export holds one graph per backbone segment and one per exit head (``onnx/segment_<i>.onnx``,
``onnx/head_<i>.onnx``, dynamic batch axis). The runner follows the rule of ``eval.runtime``:
segment i, then head i; a sample leaves at the first exit whose score (``exits.policies``
confidence of the export's criterion, cumulative for ``learned``) reaches the threshold; the
rows that left are dropped before the next segment, so later graphs see smaller batches.

    runner = OnnxEarlyExitRunner("runs/cifar10/export/nsga2-0147")
    pred, exit_index, logits = runner.predict(x)   # x: float32 (N, C, H, W), normalised
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from exits.policies import class_logits_np, exit_confidence_np
from nachos.runtime import RunError

MANIFEST = "arch.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def read_manifest(export_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(folder, parsed arch.json) of an export folder or of its arch.json; RunError naming the file."""
    path = Path(export_dir)
    folder = path.parent if path.name == MANIFEST else path
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise RunError(f"no export at {folder}: {manifest} is missing; create one with make export CONFIG=...")
    try:
        data = json.loads(manifest.read_text())
        if not isinstance(data, dict) or "description" not in data or "thresholds" not in data:
            raise ValueError("not an export manifest")
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise RunError(f"export file {manifest} is damaged ({err}); re-export with make export CONFIG=...") from None
    return folder, data


def verified_file(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """``folder/name`` after checking that it exists and has the digest arch.json recorded."""
    path = folder / name
    if not path.is_file():
        raise RunError(f"export file {path} is missing; re-export with make export CONFIG=...")
    expected = manifest.get("files", {}).get(name)
    if expected is not None and sha256_file(path) != expected:
        raise RunError(f"export file {path} is damaged (its SHA-256 differs from the one in {folder / MANIFEST}); "
                       "re-export with make export CONFIG=...")
    return path


class OnnxEarlyExitRunner:
    """The export's segment and head graphs in onnxruntime sessions, with the early-exit rule."""

    def __init__(self, export_dir: str | Path, providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        self.folder, self.manifest = read_manifest(export_dir)
        m = self.manifest
        if "onnx" not in m:
            raise RunError(f"the export in {self.folder} has no ONNX graphs (exported with export.onnx=false)")
        self.criterion: str = m["criterion"]
        self.thresholds = np.asarray(m["thresholds"], dtype=np.float32)
        self.input_shape: tuple[int, ...] = tuple(m["input"]["shape"])
        self.num_classes: int = int(m["num_classes"])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = providers or ["CPUExecutionProvider"]

        def session(name: str) -> Any:
            path = verified_file(self.folder, m, name)
            try:
                return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as err:  # onnxruntime raises its own exception types for bad graphs
                raise RunError(f"export file {path} is damaged ({type(err).__name__}: {str(err).splitlines()[0]}); "
                               "re-export with make export CONFIG=...") from None

        self.segments = [session(n) for n in m["onnx"]["segments"]]
        self.heads = [session(n) for n in m["onnx"]["heads"]]
        if len(self.segments) != len(self.heads) + 1 or len(self.heads) != len(self.thresholds):
            raise RunError(f"export {self.folder / MANIFEST} is inconsistent: {len(self.segments)} segments, "
                           f"{len(self.heads)} heads, {len(self.thresholds)} thresholds")

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def check_input(self, x: Any) -> np.ndarray:
        expected = "expected a float tensor of shape (N, " + ", ".join(map(str, self.input_shape)) + ")"
        if not isinstance(x, np.ndarray):
            if hasattr(x, "detach"):  # a torch tensor: accept it, the check below still applies
                x = x.detach().cpu().numpy()
            else:
                raise ValueError(f"{expected}, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            got = "(N, " + ", ".join(map(str, x.shape[1:])) + ")" if x.ndim == 4 else str(tuple(x.shape))
            raise ValueError(f"{expected}, got {got}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{expected}, got {x.dtype} of shape (N, {', '.join(map(str, x.shape[1:]))}); "
                             "convert and normalise images first")
        return np.ascontiguousarray(x, dtype=np.float32)

    @staticmethod
    def _run(session: Any, x: np.ndarray) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    def run_all(self, x: Any) -> list[np.ndarray]:
        """Class logits of every exit, then of the final classifier, for every sample."""
        x = self.check_input(x)
        outs = []
        for seg, head in zip(self.segments, self.heads):
            x = self._run(seg, x)
            outs.append(class_logits_np(self._run(head, x), self.criterion))
        outs.append(self._run(self.segments[-1], x))
        return outs

    def run_backbone(self, x: Any) -> np.ndarray:
        """Final logits through the segments alone, no head: the no-early-exit baseline."""
        x = self.check_input(x)
        for seg in self.segments:
            x = self._run(seg, x)
        return x

    def predict(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pred (N,), exit index (N,), class logits of the exit taken (N, classes)); exit index
        ``num_exits`` = the final classifier."""
        x = self.check_input(x)
        n = x.shape[0]
        rows = np.arange(n)
        pred = np.zeros(n, dtype=np.int64)
        exit_index = np.full(n, self.num_exits, dtype=np.int64)
        logits = np.zeros((n, self.num_classes), dtype=np.float32)
        survive = np.ones(n, dtype=np.float32)
        for i, (seg, head) in enumerate(zip(self.segments, self.heads)):
            if len(x) == 0:
                break
            x = self._run(seg, x)
            out = self._run(head, x)
            conf = exit_confidence_np(out, self.criterion)
            if self.criterion == "learned":
                survive = survive * (np.float32(1.0) - conf)
                score = np.float32(1.0) - survive
            else:
                score = conf
            t = self.thresholds[i]
            leave = (score >= t) & (t < 1.0)
            if leave.any():
                cls = class_logits_np(out[leave], self.criterion)
                where = rows[leave]
                logits[where] = cls
                pred[where] = cls.argmax(axis=1)
                exit_index[where] = i
                keep = ~leave
                x, rows, survive = x[keep], rows[keep], survive[keep]
        if len(x):
            final = self._run(self.segments[-1], x)
            logits[rows] = final
            pred[rows] = final.argmax(axis=1)
        return pred, exit_index, logits
