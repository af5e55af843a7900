"""The early-exit inference engine: one static network, one threshold per selected exit.

Semantics (the same in PyTorch, in the TorchScript file, which is this module scripted, and in
``eval.onnx_runner``): per sample, run the backbone segment by segment; after segment i ask
exit head i; the sample leaves at the first exit whose score reaches its threshold, else it
goes on to the final classifier. The score is the exit confidence of the configured criterion
(``exits.policies``): max softmax, 1 - normalised entropy, or, for ``learned``, NACHOS's
cumulative rule 1 - prod_{k<=i} (1 - c_k). A threshold >= 1 never lets a sample leave.

In a batch, the rows that left are dropped (``index_select``) before the next segment runs, so
compute shrinks with every exit: the saving is real, not simulated by masking.

``forward`` is written in the TorchScript subset (``torch.jit.script(model)`` works), which is
why the confidence is computed by ``_confidence`` below rather than by calling
``exits.policies.exit_confidence`` (not scriptable); tests check the two agree bit for bit.
"""
# no `from __future__ import annotations`: TorchScript reads the class-level annotations as types

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from exits.policies import CRITERIA
from supernet.static import StaticEENet


class EarlyExitOutput(NamedTuple):
    pred: torch.Tensor  # (N,) int64 predicted class
    exit_index: torch.Tensor  # (N,) int64 exit taken; len(exits) = final classifier
    logits: torch.Tensor  # (N, num_classes) class logits of the exit taken


def _confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Scriptable twin of ``exits.policies.exit_confidence`` (same ops, same float32 results)."""
    if criterion == "learned":
        return torch.sigmoid(logits[:, -1].float())
    logp = F.log_softmax(logits.float(), dim=-1)
    if criterion == "softmax":
        return logp.max(dim=-1).values.exp()
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return 1.0 - entropy / math.log(logits.shape[-1])


def shape_text(shape: Sequence[int]) -> str:
    return "(N, " + ", ".join(str(int(s)) for s in shape) + ")"


@torch.jit.unused
def _check_input_eager(x: torch.Tensor, shape: list[int]) -> None:
    # eager mode names the dtype; TorchScript cannot print one, so the scripted check says less
    expected = f"expected a float tensor of shape {shape_text(shape)}"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{expected}, got {type(x).__name__}")
    got = shape_text(x.shape[1:]) if x.dim() == 4 else str(tuple(x.shape))
    if x.dim() != 4 or list(x.shape[1:]) != list(shape):
        hint = " (a single image needs a batch axis: x.unsqueeze(0))" if list(x.shape) == list(shape) else ""
        raise ValueError(f"{expected}, got {got}{hint}")
    if not x.is_floating_point():
        raise ValueError(f"{expected}, got {str(x.dtype).replace('torch.', '')} of shape {got}; "
                         "convert and normalise images first (EarlyExitModel.normalize)")


class EarlyExitModel(nn.Module):
    """A ``StaticEENet`` with thresholds and a criterion: ``forward(x)`` exits early per sample.

    ``forward(x)`` takes normalised float images ``(N, C, H, W)`` and returns
    ``(pred, exit_index, logits)`` (see ``EarlyExitOutput``); ``predict`` wraps it in the named
    tuple. ``run_all`` returns every exit's class logits without exiting (for checks), and
    ``run_backbone`` the final logits through the backbone alone, no heads (the no-early-exit
    baseline). The state dict is the wrapped network's, so exported safetensors load into
    either. Inputs of the wrong shape or dtype raise ValueError naming the expected shape
    (from the TorchScript file: a ``torch.jit.Error`` with the same text).
    """

    # class-level annotations: TorchScript ignores instance-level ones for list attributes
    criterion: str
    num_exits: int
    num_classes: int
    input_shape: list[int]
    threshold_values: list[float]
    exit_ids: list[int]

    def __init__(self, net: StaticEENet, thresholds: Sequence[float], criterion: str,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"unknown exit criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
        if len(thresholds) != len(net.heads):
            raise ValueError(f"{len(thresholds)} thresholds for {len(net.heads)} selected exits {net.exit_ids}")
        self.segments = net.segments
        self.heads = net.heads
        self.criterion = criterion
        self.num_exits = len(net.heads)
        self.num_classes = int(net.description()["space"]["num_classes"])
        self.input_shape = [int(s) for s in net.segment_input_shapes[0]]
        self.threshold_values = [float(t) for t in thresholds]
        # float32, like exits.policies.first_exit, so that decisions match search's bit for bit
        self.register_buffer("thresholds", torch.tensor(self.threshold_values, dtype=torch.float32),
                             persistent=False)
        self.exit_ids = list(net.exit_ids)
        n = self.input_shape[0]
        self.register_buffer("mean", torch.tensor(list(mean) if mean is not None else [0.0] * n).view(1, n, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(std) if std is not None else [1.0] * n).view(1, n, 1, 1),
                             persistent=False)
        self._description = net.description()

    # ------------------------------------------------------------------ plain-python helpers
    def description(self) -> dict[str, Any]:
        return dict(self._description)

    def static_net(self) -> StaticEENet:
        """A ``StaticEENet`` sharing this model's modules (outputs of every exit, no decisions)."""
        with torch.random.fork_rng(devices=[]):  # its random init is replaced at once: leave the RNG alone
            net = StaticEENet.from_description(self._description)
        net.segments, net.heads = self.segments, self.heads
        return net.train(self.training)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) in [0, 255] -> the normalised float input ``forward`` expects."""
        if images.dtype != torch.uint8:
            raise ValueError(f"normalize expects uint8 images, got {images.dtype}")
        return (images.to(self.mean.device).float() / 255.0 - self.mean) / self.std

    def predict(self, x: torch.Tensor) -> EarlyExitOutput:
        return EarlyExitOutput(*self(x))

    # ------------------------------------------------------------------ scriptable
    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            _check_input_eager(x, self.input_shape)
        c, h, w = self.input_shape[0], self.input_shape[1], self.input_shape[2]
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != h or x.shape[3] != w or not x.is_floating_point():
            raise ValueError("expected a float tensor of shape (N, {}, {}, {}), got shape ({}){}".format(
                c, h, w, ", ".join([str(s) for s in x.shape]),
                "" if x.is_floating_point() else " of a non-float dtype"))

    def _class_logits(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, :-1] if self.criterion == "learned" else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_input(x)
        n = x.shape[0]
        device = x.device
        rows = torch.arange(n, device=device)  # original row of each sample still running
        pred = torch.zeros(n, dtype=torch.long, device=device)
        exit_index = torch.full((n,), self.num_exits, dtype=torch.long, device=device)
        logits = torch.zeros(n, self.num_classes, dtype=x.dtype, device=device)
        survive = torch.ones(n, dtype=torch.float32, device=device)  # learned: prod_{k<=i} (1 - c_k)
        i = 0
        for segment, head in zip(self.segments, self.heads):
            if x.shape[0] > 0:
                x = segment(x)
                out = head(x)
                conf = _confidence(out, self.criterion)
                if self.criterion == "learned":
                    survive = survive * (1.0 - conf)
                    score = 1.0 - survive
                else:
                    score = conf
                threshold = self.thresholds[i]
                leave = (score >= threshold) & (threshold < 1.0)
                gone = leave.nonzero().squeeze(1)
                if gone.numel() > 0:
                    cls = self._class_logits(out).index_select(0, gone)
                    where = rows.index_select(0, gone)
                    logits.index_copy_(0, where, cls.to(logits.dtype))
                    pred.index_copy_(0, where, cls.argmax(dim=1))
                    exit_index.index_fill_(0, where, i)
                    stay = (~leave).nonzero().squeeze(1)
                    x = x.index_select(0, stay)
                    rows = rows.index_select(0, stay)
                    survive = survive.index_select(0, stay)
            i += 1
        if x.shape[0] > 0:
            final = self.segments[-1](x)
            logits.index_copy_(0, rows, final.to(logits.dtype))
            pred.index_copy_(0, rows, final.argmax(dim=1))
        return pred, exit_index, logits

    @torch.jit.export
    def run_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Class logits of every selected exit, then of the final classifier, for every sample."""
        self._check_input(x)
        outs: list[torch.Tensor] = []
        for segment, head in zip(self.segments, self.heads):
            x = segment(x)
            outs.append(self._class_logits(head(x)))
        outs.append(self.segments[-1](x))
        return outs

    @torch.jit.export
    def run_all_confidences(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Class logits of every exit and the final, and the (E, N) exit confidences."""
        self._check_input(x)
        outs: list[torch.Tensor] = []
        confs: list[torch.Tensor] = []
        for segment, head in zip(self.segments, self.heads):
            x = segment(x)
            out = head(x)
            confs.append(_confidence(out, self.criterion))
            outs.append(self._class_logits(out))
        outs.append(self.segments[-1](x))
        conf = torch.stack(confs) if len(confs) > 0 else torch.zeros(0, x.shape[0], device=x.device)
        return outs, conf

    @torch.jit.export
    def run_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Final logits of the backbone run to the end, no exit head evaluated."""
        self._check_input(x)
        for segment in self.segments:
            x = segment(x)
        return x


def build_model(desc: Mapping[str, Any], thresholds: Sequence[float], criterion: str,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> EarlyExitModel:
    """An early-exit model with the structure of ``desc`` (``StaticEENet.description()``), random weights."""
    return EarlyExitModel(StaticEENet.from_description(desc), thresholds, criterion, mean, std)


def script_model(model: EarlyExitModel) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without its deprecation warning (TorchScript is still what C++ and
    mobile runtimes load)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        return torch.jit.script(model)
