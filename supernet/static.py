"""A static early-exit network: one subnet of the space with its chosen exits, plain torch modules.

``StaticEENet`` is what extraction from the supernet produces and what export / deployment
use. It holds no elastic code: ``segments`` are the backbone pieces between consecutive
selected exits (the first starts with the stem, the last ends with the final classifier) and
``heads`` the selected exit heads, so a runtime computes ``segments[0]``, asks ``heads[0]``,
and only goes on to ``segments[1]`` for the samples that did not leave. Each segment and head
is an ``nn.Sequential`` of ordinary layers: ptflops can count it and ONNX can export it alone
(``segment_input_shapes`` / ``head_input_shapes`` give the shapes to feed).

The structure is a pure function of (space config, head settings, arch, exit ids), written out
by ``description()``: ``StaticEENet.from_description(desc)`` rebuilds it with random weights
so that a saved state_dict (e.g. safetensors) loads into it without the supernet.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_layer

from exits.heads import LIGHT_MAX_SIZE, ExitHead, create_exit_head, scale_gradient
from nachos.config import ExitsConfig, SpaceConfig
from supernet.space import Arch, BlockSpec, SearchSpace, space_config_from_dict

# config names -> timm activation names; the elastic modules resolve the same names to the
# same torch functions, which keeps extracted outputs identical to the supernet's
ACT_NAMES: dict[str, str] = {"relu": "relu", "hswish": "hard_swish"}


def act_layer(name: str | None) -> nn.Module:
    return nn.Identity() if name is None else get_act_layer(ACT_NAMES[name])()


@dataclass(frozen=True)
class HeadSettings:
    """What the exit heads look like: the part of ``ExitsConfig`` that shapes the network."""

    kind: str = "light"
    width: int = 64
    confidence_output: bool = False
    max_map: int = LIGHT_MAX_SIZE

    @classmethod
    def from_exits(cls, exits: HeadSettings | ExitsConfig | Mapping[str, Any]) -> HeadSettings:
        if isinstance(exits, HeadSettings):
            return exits
        if isinstance(exits, ExitsConfig):
            return cls(exits.head, exits.head_width, exits.criterion == "learned", exits.head_max_map)
        if {"kind", "width", "confidence_output", "max_map"} >= set(exits) and exits:
            return cls(**exits)  # saved before max_map existed: the default, which they were built with
        # an ExitsConfig as a dict (dataclasses.asdict / the YAML section)
        return cls(exits.get("head", cls.kind), exits.get("head_width", cls.width),
                   exits.get("criterion", "softmax") == "learned", exits.get("head_max_map", cls.max_map))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def create(self, max_in_channels: int, in_size: int, num_classes: int) -> ExitHead:
        """The exit head these settings describe, for maps of ``in_size`` and up to ``max_in_channels``."""
        return create_exit_head(self.kind, max_in_channels, in_size, num_classes, self.width,
                                self.confidence_output, self.max_map)


# ----------------------------------------------------------------------------- layers
class ConvBnAct(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, act: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite: mean -> 1x1 -> ReLU -> 1x1 -> hard-sigmoid gate."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, se_channels, 1)
        self.expand = nn.Conv2d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.expand(s))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ identity)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        mid = spec.mid_channels
        self.expand = ConvBnAct(spec.in_channels, mid, 1, act=spec.act) if spec.expand else None
        self.dw = ConvBnAct(mid, mid, spec.kernel, spec.stride, groups=mid, act=spec.act)
        self.se = SqueezeExcite(mid, spec.se_channels) if spec.se_channels else None
        self.project = ConvBnAct(mid, spec.out_channels, 1)
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = self.expand(h)
        h = self.dw(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return h + x if self.residual else h


class FinalClassifier(nn.Module):
    """1x1 expand -> BN -> act -> global average pool -> dropout -> linear."""

    def __init__(self, in_channels: int, width: int, num_classes: int, act: str, dropout: float) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_channels, width, 1, act=act)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x).mean((2, 3))))


def make_stem(space: SearchSpace) -> ConvBnAct:
    # the stem takes the first stage's activation: there is no separate config key for it
    cfg = space.cfg
    return ConvBnAct(cfg.in_channels, cfg.stem_channels, 3, cfg.stem_stride, act=space.stages[0].act)


def check_exit_ids(space: SearchSpace, arch: Arch, exit_ids: Sequence[int]) -> list[int]:
    ids = [int(i) for i in exit_ids]
    available = space.available_exits(arch)
    if ids != sorted(set(ids)):
        raise ValueError(f"exit_ids={ids}: must be strictly increasing (network order)")
    for i in ids:
        if i not in available:
            raise ValueError(f"exit {i} is not available for this arch; available: {available}")
    return ids


# ----------------------------------------------------------------------------- network
class StaticEENet(nn.Module):
    """Early-exit network with plain modules. ``forward(x)`` returns the logits of every selected
    exit in network order, then the final classifier's (``len(exit_ids) + 1`` tensors)."""

    # bookkeeping for export and cost counting, not part of the scripted forward
    __jit_ignored_attributes__ = ["segment_input_shapes", "head_input_shapes"]

    def __init__(self, space: SearchSpace, heads: HeadSettings, arch: Arch, exit_ids: Sequence[int]) -> None:
        super().__init__()
        self.arch = space.validate(arch)
        self.exit_ids = check_exit_ids(space, arch, exit_ids)
        self.head_settings = heads
        self._space_cfg = space.cfg
        cfg = space.cfg
        positions = space.exit_positions()
        segments: list[nn.Sequential] = []
        seg_shapes: list[tuple[int, int, int]] = [(cfg.in_channels, cfg.input_size, cfg.input_size)]
        head_shapes: list[tuple[int, int, int]] = []
        head_modules: list[nn.Module] = []
        current: list[nn.Module] = [make_stem(space)]
        for spec in space.block_specs(arch):
            current.append(MBConv(spec))
            pos = space.exit_position_of(spec.stage, spec.block, arch)
            if pos is not None and pos in self.exit_ids:
                segments.append(nn.Sequential(*current))
                current = []
                shape = (spec.out_channels, spec.out_size, spec.out_size)
                seg_shapes.append(shape)
                head_shapes.append(shape)
                p = positions[pos]
                c = arch.widths[p.stage]
                head_modules.append(heads.create(c, p.resolution, cfg.num_classes).extract(c))
        current.append(FinalClassifier(arch.widths[-1], arch.final_width, cfg.num_classes,
                                       space.stages[-1].act, cfg.dropout))
        segments.append(nn.Sequential(*current))
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(head_modules)
        self.segment_input_shapes = seg_shapes  # (C, H, W) fed to each segment
        self.head_input_shapes = head_shapes  # (C, H, W) fed to each selected head
        # training setting (exits.backbone_grad), not structure: trainers set it, exports run at 1
        self.backbone_grad: float = 1.0

    @classmethod
    def from_config(cls, space: SpaceConfig | Mapping[str, Any] | SearchSpace,
                    exits: HeadSettings | ExitsConfig | Mapping[str, Any], arch: Arch | Mapping[str, Any],
                    exit_ids: Sequence[int]) -> StaticEENet:
        """The network's structure with fresh random weights (load a saved state_dict into it)."""
        if not isinstance(space, SearchSpace):
            space = SearchSpace(space_config_from_dict(space))
        if not isinstance(arch, Arch):
            arch = Arch.from_dict(arch)
        return cls(space, HeadSettings.from_exits(exits), arch, exit_ids)

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> StaticEENet:
        return cls.from_config(desc["space"], desc["exits"], desc["arch"], desc["exit_ids"])

    def description(self) -> dict[str, Any]:
        """JSON-serialisable description from which ``from_description`` rebuilds this structure."""
        return {"space": dataclasses.asdict(self._space_cfg), "exits": self.head_settings.to_dict(),
                "arch": self.arch.to_dict(), "exit_ids": list(self.exit_ids)}

    def backbone_modules(self) -> list[nn.Module]:
        """Stem, every MBConv block and the final classifier, in network order."""
        return [m for seg in self.segments for m in seg]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        # zip stops at the heads, leaving the last segment (written as a loop over module
        # lists, not an index, so that TorchScript accepts it)
        for segment, head in zip(self.segments, self.heads):
            x = segment(x)
            outs.append(head(scale_gradient(x, self.backbone_grad)))
        outs.append(self.segments[-1](x))
        return outs
