"""Exit heads (early-exit classifiers) that hang on a backbone feature map.

A head is built once for the widest feature map it may see (``max_in_channels``) and runs on
any narrower one: backbone channels are "first c kept", so the head slices its first layer's
input channels to ``x.shape[1]``. ``extract(c)`` returns a plain static copy for c channels.

Designs:
- ``light``: depthwise 3x3 (stride 2 when the map is larger than ``max_map``, default
  ``LIGHT_MAX_SIZE``, so that the pointwise conv, the head's main cost, runs on a small map) ->
  pointwise to ``width`` -> BN -> ReLU -> global average pool -> linear. Roughly 0.1-0.3 M MACs
  on a 32 px CIFAR backbone with ``max_map=8``; ``max_map=4`` makes heads on 8x8 maps ~4x cheaper.
- ``nachos``: NACHOS's cost-aware head: max-pool -> ReLU-Conv3x3(C->32) -> ReLU-Conv3x3(32->64)
  -> ReLU-Conv3x3(64->128) -> ReLU -> flatten -> linear (convs keep the size, padding 1).
  NACHOS picks the pool size (1, 2 or 4) by comparing cumulative costs of neighbouring exits,
  which needs the whole network; a head here only knows its own input, so the pool is the
  largest of 1, 2, 4 that still leaves at least a 2x2 map (see ``nachos_pool_size``): a 16x16
  map is pooled to 4x4 (flatten 2048), 8x8 and 4x4 maps to 2x2 (flatten 512). The width
  argument is ignored by this design (its widths are NACHOS's 32/64/128).

``scale_gradient`` sits between a backbone map and its head: it sets how much of the head's
loss gradient reaches the backbone (``exits.backbone_grad``).

With ``confidence_output`` (the ``learned`` exit criterion) a head returns ``num_classes + 1``
logits, the last being the confidence logit (c = sigmoid of it), as in NACHOS.

This module imports nothing else of the project (layering rule of ``docs/DESIGN.md``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_KINDS: tuple[str, ...] = ("light", "nachos")
LIGHT_MAX_SIZE = 8  # default max_map of the light head: larger maps are strided by 2 in the depthwise conv
NACHOS_WIDTHS: tuple[int, int, int] = (32, 64, 128)
NACHOS_POOLS: tuple[int, ...] = (1, 2, 4)
NACHOS_MIN_MAP = 2  # smallest map the nachos head's flatten-linear sees after its pool


def nachos_pool_size(in_size: int) -> int:
    """Largest pool of NACHOS_POOLS that leaves a map of at least NACHOS_MIN_MAP pixels a side."""
    fitting = [p for p in NACHOS_POOLS if in_size // p >= NACHOS_MIN_MAP]
    return max(fitting) if fitting else 1


def _light_stride(in_size: int, max_map: int) -> int:
    return 2 if in_size > max_map else 1


def _init_conv(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def _init_linear(layer: nn.Linear) -> None:
    # small logits at the start: exits should not dominate the shared backbone's early gradients
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.zeros_(layer.bias)


class ExitHead(nn.Module):
    """Common interface: ``forward(x)`` with ``x.shape[1] <= max_in_channels``; ``extract(c)``."""

    kind: str = ""

    def __init__(self, max_in_channels: int, in_size: int, num_classes: int, confidence_output: bool) -> None:
        super().__init__()
        self.max_in_channels = max_in_channels
        self.in_size = in_size
        self.num_classes = num_classes
        self.confidence_output = confidence_output
        self.out_features = num_classes + int(confidence_output)

    def _check_channels(self, c: int) -> None:
        if not 1 <= c <= self.max_in_channels:
            raise ValueError(f"{self.kind} exit head built for <= {self.max_in_channels} channels got {c}")

    def extract(self, in_channels: int) -> nn.Module:
        raise NotImplementedError


class LightExitHead(ExitHead):
    kind = "light"

    def __init__(self, max_in_channels: int, in_size: int, num_classes: int, width: int,
                 confidence_output: bool, max_map: int = LIGHT_MAX_SIZE) -> None:
        super().__init__(max_in_channels, in_size, num_classes, confidence_output)
        self.width = width
        self.stride = _light_stride(in_size, max_map)
        self.dw_weight = nn.Parameter(torch.empty(max_in_channels, 1, 3, 3))
        self.pw_weight = nn.Parameter(torch.empty(width, max_in_channels, 1, 1))
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, self.out_features)
        _init_conv(self.dw_weight)
        _init_conv(self.pw_weight)
        _init_linear(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        dw, pw = self.dw_weight, self.pw_weight
        if c != self.max_in_channels:
            self._check_channels(c)
            dw, pw = dw[:c], pw[:, :c]
        x = F.conv2d(x, dw, None, self.stride, 1, 1, c)
        x = F.relu(self.bn(F.conv2d(x, pw)))
        return self.fc(x.mean((2, 3)))

    def extract(self, in_channels: int) -> nn.Sequential:
        self._check_channels(in_channels)
        dw = nn.Conv2d(in_channels, in_channels, 3, self.stride, 1, groups=in_channels, bias=False)
        pw = nn.Conv2d(in_channels, self.width, 1, bias=False)
        bn = nn.BatchNorm2d(self.width)
        fc = nn.Linear(self.width, self.out_features)
        with torch.no_grad():
            dw.weight.copy_(self.dw_weight[:in_channels])
            pw.weight.copy_(self.pw_weight[:, :in_channels])
        bn.load_state_dict(self.bn.state_dict())
        fc.load_state_dict(self.fc.state_dict())
        bn.train(self.bn.training)
        return nn.Sequential(dw, pw, bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), fc)


class NachosExitHead(ExitHead):
    kind = "nachos"

    def __init__(self, max_in_channels: int, in_size: int, num_classes: int, confidence_output: bool) -> None:
        super().__init__(max_in_channels, in_size, num_classes, confidence_output)
        self.pool = nachos_pool_size(in_size)
        self.map_size = in_size // self.pool  # max_pool2d floors, like nn.MaxPool2d
        c1, c2, c3 = NACHOS_WIDTHS
        self.conv1 = nn.Conv2d(max_in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * self.map_size * self.map_size, self.out_features)
        for conv in (self.conv1, self.conv2, self.conv3):
            _init_conv(conv.weight)
            nn.init.zeros_(conv.bias)
        _init_linear(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w1 = self.conv1.weight
        if c != self.max_in_channels:
            self._check_channels(c)
            w1 = w1[:, :c]
        if self.pool > 1:
            x = F.max_pool2d(x, self.pool)
        x = F.relu(F.conv2d(F.relu(x), w1, self.conv1.bias, 1, 1))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.flatten(1))

    def extract(self, in_channels: int) -> nn.Sequential:
        self._check_channels(in_channels)
        conv1 = nn.Conv2d(in_channels, NACHOS_WIDTHS[0], 3, padding=1)
        conv2 = nn.Conv2d(NACHOS_WIDTHS[0], NACHOS_WIDTHS[1], 3, padding=1)
        conv3 = nn.Conv2d(NACHOS_WIDTHS[1], NACHOS_WIDTHS[2], 3, padding=1)
        fc = nn.Linear(self.fc.in_features, self.out_features)
        with torch.no_grad():
            conv1.weight.copy_(self.conv1.weight[:, :in_channels])
            conv1.bias.copy_(self.conv1.bias)
        conv2.load_state_dict(self.conv2.state_dict())
        conv3.load_state_dict(self.conv3.state_dict())
        fc.load_state_dict(self.fc.state_dict())
        pool: nn.Module = nn.MaxPool2d(self.pool) if self.pool > 1 else nn.Identity()
        return nn.Sequential(pool, nn.ReLU(), conv1, nn.ReLU(), conv2, nn.ReLU(), conv3, nn.ReLU(),
                             nn.Flatten(1), fc)


def create_exit_head(kind: str, max_in_channels: int, in_size: int, num_classes: int, width: int,
                     confidence_output: bool, max_map: int = LIGHT_MAX_SIZE) -> ExitHead:
    """An exit head of design ``kind`` for maps of ``in_size`` x ``in_size`` and up to
    ``max_in_channels`` channels; it outputs ``num_classes (+1 if confidence_output)`` logits.
    ``width`` and ``max_map`` shape the light head only."""
    if max_in_channels < 1 or in_size < 1 or num_classes < 1:
        raise ValueError(f"exit head: bad shape (max_in_channels={max_in_channels}, in_size={in_size}, "
                         f"num_classes={num_classes})")
    if kind == "light":
        if width < 1:
            raise ValueError(f"light exit head: width must be >= 1, got {width}")
        if max_map < 1:
            raise ValueError(f"light exit head: max_map must be >= 1, got {max_map}")
        return LightExitHead(max_in_channels, in_size, num_classes, width, confidence_output, max_map)
    if kind == "nachos":
        return NachosExitHead(max_in_channels, in_size, num_classes, confidence_output)
    raise ValueError(f"unknown exit head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged going forward; going back, the gradient times ``scale``.

    A head reads the backbone's map through this so that its loss trains the head fully while
    shaping the shared backbone only by ``scale`` (0 = the backbone ignores the exits).
    """
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())


__all__ = ["HEAD_KINDS", "ExitHead", "LightExitHead", "NachosExitHead", "create_exit_head",
           "nachos_pool_size"]
