"""The elastic supernet with an exit head at every candidate exit position.

``set_active(arch)`` picks the subnet; ``forward(x)`` runs it and returns one entry per
candidate exit position (in position order) and then the final classifier's logits:

    outs = net(x)          # len(outs) == len(space.exit_positions()) + 1
    outs[p]                # logits of exit p, or None when p is unavailable for the arch
    outs[-1]               # final classifier, (N, num_classes)

With ``exit_positions: stage`` every position is available to every arch (no None); with
``block`` a position after block b of a stage is unavailable when the arch's depth there is
<= b. Exit heads output ``num_classes + 1`` logits (last = confidence logit) when the exit
criterion is ``learned``; the final classifier always outputs ``num_classes``.

Distributed training: a subnet leaves part of the weights unused in a step (deeper blocks,
skipped expand convs, wider channels, unavailable heads), so wrap the supernet with
``DistributedDataParallel(..., find_unused_parameters=True)``. Sliced-off channels of a used
weight simply get zero gradient.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from exits.heads import scale_gradient
from nachos.config import Config, ExitsConfig
from supernet.modules import ElasticFinalClassifier, ElasticMBConv, load_cropped
from supernet.space import Arch, BlockSpec, SearchSpace
from supernet.static import HeadSettings, StaticEENet, make_stem


class _Step(NamedTuple):
    block: ElasticMBConv
    spec: BlockSpec
    exit_index: int  # candidate position fed by this block's output, -1 for none


class ElasticSupernet(nn.Module):
    """Weight-sharing supernet of a ``SearchSpace`` plus its exit heads."""

    def __init__(self, space: SearchSpace, exits: HeadSettings | ExitsConfig | Mapping[str, Any],
                 kernel_transform: bool = False) -> None:
        super().__init__()
        self.space = space
        self.head_settings = HeadSettings.from_exits(exits)
        cfg = space.cfg
        self.stem = make_stem(space)
        stages = []
        for s, st in enumerate(space.stages):
            blocks = []
            for b in range(st.max_depth):
                max_in, max_mid, max_out, max_se = space.max_block_channels(s, b)
                blocks.append(ElasticMBConv(max_in, max_mid, max_out, max_se, st.kernels[-1],
                                            st.stride if b == 0 else 1, st.expand_ratios[-1] > 1, st.act,
                                            st.kernels if kernel_transform else ()))
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(self.head_settings.create(p.max_channels, p.resolution, cfg.num_classes)
                                   for p in space.exit_positions())
        self.final = ElasticFinalClassifier(space.stages[-1].widths[-1], space.final_widths[-1], cfg.num_classes,
                                            space.stages[-1].act)
        self._init_backbone()
        self.active_arch: Arch = space.largest()
        self.active_dropout: float = 0.0
        self.backbone_grad: float = float(exits.backbone_grad) if isinstance(exits, ExitsConfig) else 1.0
        self._plan: list[_Step] = []
        self.set_active(self.active_arch)

    def _init_backbone(self) -> None:
        for m in self.stem.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # BigNAS: a residual block starts as the identity, so deep subnets train like shallow ones
        for stage in self.stages:
            for block in list(stage)[1:]:
                nn.init.zeros_(block.project.bn.weight)

    # ------------------------------------------------------------------ active subnet
    def set_active(self, arch: Arch, dropout: float | None = None) -> None:
        """Make ``arch`` the subnet that ``forward`` runs. ``dropout`` before the final classifier
        defaults to the space's ``dropout`` for the largest subnet and 0 otherwise."""
        space = self.space
        space.validate(arch)
        plan = []
        for spec in space.block_specs(arch):
            pos = space.exit_position_of(spec.stage, spec.block, arch)
            plan.append(_Step(self.stages[spec.stage][spec.block], spec, -1 if pos is None else pos))
        self._plan = plan
        self.active_arch = arch
        if dropout is None:
            dropout = space.cfg.dropout if arch == space.largest() else 0.0
        self.active_dropout = dropout

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, exit_ids: Collection[int] | None = None) -> list[torch.Tensor | None]:
        """Logits of every candidate exit (None if unavailable, or not in ``exit_ids`` when
        given), then of the final classifier."""
        outs: list[torch.Tensor | None] = [None] * len(self.heads)
        x = self.stem(x)
        for step in self._plan:
            x = step.block(x, step.spec)
            i = step.exit_index
            if i >= 0 and (exit_ids is None or i in exit_ids):
                outs[i] = self.heads[i](scale_gradient(x, self.backbone_grad))
        outs.append(self.final(x, self.active_arch.final_width, self.active_dropout))
        return outs

    # ------------------------------------------------------------------ extraction
    def extract(self, arch: Arch | None = None, exit_ids: Sequence[int] | None = None) -> StaticEENet:
        """Static copy of ``arch`` (default: the active one) with the exits ``exit_ids`` (default:
        every exit available to it). Weights are copied; the result shares no memory."""
        arch = self.active_arch if arch is None else arch
        if exit_ids is None:
            exit_ids = self.space.available_exits(arch)
        # building the copy draws random initial weights, all overwritten: keep the RNG as it was
        with torch.random.fork_rng(devices=[]):
            net = StaticEENet(self.space, self.head_settings, arch, exit_ids)
            elastic = ([self.stem] + [self.stages[s.stage][s.block] for s in self.space.block_specs(arch)]
                       + [self.final])
            static = net.backbone_modules()
            assert len(static) == len(elastic)
            for dst, src in zip(static, elastic):
                load_cropped(dst, src)
            positions = self.space.exit_positions()
            for head, pos in zip(net.heads, net.exit_ids):
                head.load_state_dict(self.heads[pos].extract(arch.widths[positions[pos].stage]).state_dict())
        ref = next(self.parameters())
        return net.to(device=ref.device, dtype=ref.dtype).train(self.training)


def saved_kernel_transform(ckpt: Mapping[str, Any]) -> bool:
    """Whether a supernet checkpoint's depthwise kernels carry transforms (absent in older ones)."""
    return bool(ckpt.get("config", {}).get("train", {}).get("kernel_transform", False))


def create_supernet(cfg: Config, kernel_transform: bool | None = None) -> ElasticSupernet:
    """The config's supernet; ``kernel_transform`` (default ``cfg.train.kernel_transform``) is
    passed by callers that load a checkpoint, whose weights say whether they hold transforms."""
    kt = cfg.train.kernel_transform if kernel_transform is None else kernel_transform
    return ElasticSupernet(SearchSpace.from_config(cfg.space), cfg.exits, kt)
