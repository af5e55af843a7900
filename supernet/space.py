"""The search space: which subnets exist, how they are written down, and their layer shapes.

An ``Arch`` is a genotype (plain numbers, no torch); ``SearchSpace`` turns the config's
``space`` section into the choices, samples and checks archs, lists the candidate exit
positions, and derives every layer's channel counts for an arch (``block_specs``). Both the
elastic supernet and the static extracted network are built from those specs, so the two
cannot disagree about a shape.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from timm.layers import make_divisible

from nachos.config import SpaceConfig, StageConfig
from nachos.runtime import json_digest

INACTIVE = 0  # kernel / expand-ratio entry of a block beyond the stage's active depth


def _tuple_of_ints(values: Any, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"Arch.{name}: expected a list of integers, got {values!r}") from None


@dataclass(frozen=True)
class Arch:
    """One subnet. Per-block lists run to the stage's *maximum* depth; entries past the active
    depth are set to ``INACTIVE`` (0) so that two archs describing the same subnet compare and
    hash equal."""

    depths: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    expand_ratios: tuple[tuple[int, ...], ...]
    widths: tuple[int, ...]
    final_width: int

    def __post_init__(self) -> None:
        depths = _tuple_of_ints(self.depths, "depths")
        widths = _tuple_of_ints(self.widths, "widths")
        n = len(depths)
        if not (len(self.kernels) == len(self.expand_ratios) == len(widths) == n):
            raise ValueError(f"Arch: depths, kernels, expand_ratios and widths need one entry per stage; got "
                             f"{n}, {len(self.kernels)}, {len(self.expand_ratios)}, {len(widths)}")
        kernels, ratios = [], []
        for s, d in enumerate(depths):
            ks = _tuple_of_ints(self.kernels[s], f"kernels[{s}]")
            es = _tuple_of_ints(self.expand_ratios[s], f"expand_ratios[{s}]")
            kernels.append(tuple(k if b < d else INACTIVE for b, k in enumerate(ks)))
            ratios.append(tuple(e if b < d else INACTIVE for b, e in enumerate(es)))
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "kernels", tuple(kernels))
        object.__setattr__(self, "expand_ratios", tuple(ratios))
        object.__setattr__(self, "final_width", int(self.final_width))

    def to_dict(self) -> dict[str, Any]:
        return {"depths": list(self.depths), "kernels": [list(k) for k in self.kernels],
                "expand_ratios": [list(e) for e in self.expand_ratios], "widths": list(self.widths),
                "final_width": self.final_width}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arch:
        fields = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = fields - set(data), set(data) - fields
        if missing or unknown:
            raise ValueError(f"Arch: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
        return cls(**{k: data[k] for k in fields})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Arch:
        return cls.from_dict(json.loads(text))

    def key(self) -> str:
        """Short stable id (same across processes and machines), e.g. for cache file names."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def __str__(self) -> str:
        stages = []
        for s, d in enumerate(self.depths):
            blocks = ",".join(f"k{k}e{e}" for k, e in zip(self.kernels[s][:d], self.expand_ratios[s][:d]))
            stages.append(f"w{self.widths[s]}[{blocks}]")
        return " ".join(stages) + f" f{self.final_width}"


@dataclass(frozen=True)
class StageSpace:
    """The sorted choices of one stage and the resolution it runs at."""

    index: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    stride: int
    se: bool
    act: str
    in_size: int
    out_size: int

    @property
    def max_depth(self) -> int:
        return self.depths[-1]


@dataclass(frozen=True)
class ExitPosition:
    """A place where an exit head can hang: after stage ``stage`` (``block`` None: after the
    stage's last active block, whatever its depth) or after block ``block`` of that stage."""

    index: int
    stage: int
    block: int | None
    resolution: int
    channels: tuple[int, ...]  # the stage's width choices; an arch uses arch.widths[stage]

    @property
    def max_channels(self) -> int:
        return self.channels[-1]

    def available(self, arch: Arch) -> bool:
        return self.block is None or self.block < arch.depths[self.stage]

    def after_block(self, arch: Arch) -> int:
        """Index (within the stage) of the block whose output this exit reads for ``arch``."""
        return arch.depths[self.stage] - 1 if self.block is None else self.block

    def __str__(self) -> str:
        where = f"stage {self.stage}" if self.block is None else f"stage {self.stage} block {self.block}"
        return f"exit {self.index} ({where}, {self.resolution}x{self.resolution})"


@dataclass(frozen=True)
class BlockSpec:
    """Concrete shapes of one active MBConv block of an arch."""

    stage: int
    block: int
    in_channels: int
    mid_channels: int  # depthwise channels; equal to in_channels when the expand conv is skipped
    out_channels: int
    kernel: int
    stride: int
    expand: bool  # False when the expand ratio is 1: no 1x1 expand conv
    se_channels: int  # squeeze-excite bottleneck; 0 = no SE
    act: str
    residual: bool
    in_size: int
    out_size: int


def _conv_out(size: int, stride: int) -> int:
    # 'same' padding (k // 2) with an odd kernel: the output size does not depend on k
    return (size - 1) // stride + 1


def _sorted_unique(values: Sequence[int], what: str) -> tuple[int, ...]:
    if not values:
        raise ValueError(f"{what}: needs at least one choice")
    return tuple(sorted(set(int(v) for v in values)))


def space_config_from_dict(data: Mapping[str, Any] | SpaceConfig) -> SpaceConfig:
    """A ``SpaceConfig`` from itself or its ``dataclasses.asdict`` form (e.g. read from JSON)."""
    if isinstance(data, SpaceConfig):
        return data
    known = {f.name for f in dataclasses.fields(SpaceConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"space: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    kwargs = dict(data)
    if "stages" in kwargs:
        kwargs["stages"] = [s if isinstance(s, StageConfig) else StageConfig(**s) for s in kwargs["stages"]]
    return SpaceConfig(**kwargs)


class SearchSpace:
    """Choices of the elastic MobileNetV3-style space, read from ``SpaceConfig``."""

    def __init__(self, cfg: SpaceConfig) -> None:
        self.cfg = cfg
        if not cfg.stages:
            raise ValueError("space.stages: needs at least one stage")
        self.divisor = cfg.channel_divisor
        self.se_reduction = cfg.se_reduction
        self.stem_channels = cfg.stem_channels
        self.stem_size = _conv_out(cfg.input_size, cfg.stem_stride)
        size = self.stem_size
        stages = []
        for i, st in enumerate(cfg.stages):
            kernels = _sorted_unique(st.kernels, f"space.stages[{i}].kernels")
            if any(k < 1 or k % 2 == 0 for k in kernels):
                raise ValueError(f"space.stages[{i}].kernels={list(kernels)}: kernels must be odd and positive")
            ratios = _sorted_unique(st.expand_ratios, f"space.stages[{i}].expand_ratios")
            depths = _sorted_unique(st.depths, f"space.stages[{i}].depths")
            widths = _sorted_unique(st.widths, f"space.stages[{i}].widths")
            for name, vals in (("expand_ratios", ratios), ("depths", depths), ("widths", widths)):
                if vals[0] < 1:
                    raise ValueError(f"space.stages[{i}].{name}={list(vals)}: choices must be >= 1")
            out = _conv_out(size, st.stride)
            stages.append(StageSpace(i, widths, depths, kernels, ratios, st.stride, st.se, st.act, size, out))
            size = out
        for st in stages[:-1]:
            if st.out_size < 2:
                raise ValueError(f"space: stage {st.index} already runs at 1x1 ({cfg.input_size}px input); "
                                 "remove a stride-2 stage or use stem_stride 1 so only the last stage may reach 1x1")
        self.stages: tuple[StageSpace, ...] = tuple(stages)
        self.final_widths = _sorted_unique(cfg.final_widths, "space.final_widths")
        self.num_classes = cfg.num_classes
        self._positions = tuple(self._build_positions(cfg.exit_positions))

    @classmethod
    def from_config(cls, cfg: SpaceConfig | Mapping[str, Any]) -> SearchSpace:
        return cls(space_config_from_dict(cfg))

    # ------------------------------------------------------------------ channels
    def mid_channels(self, in_channels: int, expand_ratio: int) -> int:
        return in_channels if expand_ratio == 1 else make_divisible(in_channels * expand_ratio, self.divisor)

    def se_channels(self, mid_channels: int) -> int:
        return make_divisible(mid_channels // self.se_reduction, self.divisor)

    def stage_in_channels(self, stage: int) -> tuple[int, ...]:
        """Input-channel choices of a stage's first block."""
        return (self.stem_channels,) if stage == 0 else self.stages[stage - 1].widths

    def max_block_channels(self, stage: int, block: int) -> tuple[int, int, int, int]:
        """(in, mid, out, se) channel maxima of a block: the sizes of its shared weights."""
        st = self.stages[stage]
        max_in = max(self.stage_in_channels(stage)) if block == 0 else st.widths[-1]
        max_mid = max(self.mid_channels(max_in, e) for e in st.expand_ratios)
        return max_in, max_mid, st.widths[-1], self.se_channels(max_mid) if st.se else 0

    # ------------------------------------------------------------------ archs
    def smallest(self) -> Arch:
        return self._uniform(lambda choices: choices[0])

    def largest(self) -> Arch:
        return self._uniform(lambda choices: choices[-1])

    def _uniform(self, pick: Any) -> Arch:
        return Arch(depths=tuple(pick(s.depths) for s in self.stages),
                    kernels=tuple((pick(s.kernels),) * s.max_depth for s in self.stages),
                    expand_ratios=tuple((pick(s.expand_ratios),) * s.max_depth for s in self.stages),
                    widths=tuple(pick(s.widths) for s in self.stages),
                    final_width=pick(self.final_widths))

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random choice per gene (depth, then kernel / ratio of each active block)."""
        depths, kernels, ratios = [], [], []
        for s in self.stages:
            d = rng.choice(s.depths)
            depths.append(d)
            kernels.append(tuple(rng.choice(s.kernels) if b < d else INACTIVE for b in range(s.max_depth)))
            ratios.append(tuple(rng.choice(s.expand_ratios) if b < d else INACTIVE for b in range(s.max_depth)))
        widths = tuple(rng.choice(s.widths) for s in self.stages)
        return Arch(tuple(depths), tuple(kernels), tuple(ratios), widths, rng.choice(self.final_widths))

    def parse_arch(self, text: str) -> Arch:
        """The arch written as ``str(arch)`` prints it, e.g. ``w16[k3e1] w24[k3e3,k3e3] f128`` (one
        ``w<width>[k<kernel>e<ratio>,...]`` per stage, then ``f<final width>``), checked against this
        space: reports and logs print archs this way, so a user can copy one into a config."""
        stage_re = re.compile(r"w(\d+)\[((?:k\d+e\d+)(?:,k\d+e\d+)*)\]")
        tokens = str(text).split()
        if not tokens or not re.fullmatch(r"f\d+", tokens[-1]):
            raise ValueError(f"arch {text!r}: it must end in the final width, e.g. 'f128'")
        if len(tokens) - 1 != len(self.stages):
            raise ValueError(f"arch {text!r}: {len(tokens) - 1} stages given; this space has {len(self.stages)} "
                             "(one 'w<width>[k<kernel>e<ratio>,...]' each)")
        depths, kernels, ratios, widths = [], [], [], []
        for s, (tok, st) in enumerate(zip(tokens[:-1], self.stages)):
            m = stage_re.fullmatch(tok)
            if m is None:
                raise ValueError(f"arch {text!r}: stage {s} {tok!r} is not 'w<width>[k<kernel>e<ratio>,...]', "
                                 "e.g. 'w24[k3e3,k5e2]'")
            blocks = [tuple(map(int, b[1:].split("e"))) for b in m.group(2).split(",")]
            if len(blocks) > st.max_depth:
                raise ValueError(f"arch {text!r}: stage {s} has {len(blocks)} blocks; at most {st.max_depth} here")
            pad = [INACTIVE] * (st.max_depth - len(blocks))
            depths.append(len(blocks))
            kernels.append(tuple(k for k, _ in blocks) + tuple(pad))
            ratios.append(tuple(e for _, e in blocks) + tuple(pad))
            widths.append(int(m.group(1)))
        return self.validate(Arch(tuple(depths), tuple(kernels), tuple(ratios), tuple(widths), int(tokens[-1][1:])))

    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if this space contains it; otherwise raise ValueError naming the gene."""
        n = len(self.stages)
        if len(arch.depths) != n:
            raise ValueError(f"Arch.depths has {len(arch.depths)} stages; this space has {n}")

        def bad(field: str, where: str, value: int, allowed: Sequence[int]) -> ValueError:
            return ValueError(f"Arch.{field}[{where}] = {value} is not allowed; "
                              f"choose one of {', '.join(map(str, allowed))}")

        for s, st in enumerate(self.stages):
            if arch.depths[s] not in st.depths:
                raise bad("depths", f"stage {s}", arch.depths[s], st.depths)
            if arch.widths[s] not in st.widths:
                raise bad("widths", f"stage {s}", arch.widths[s], st.widths)
            for field, genes, allowed in (("kernels", arch.kernels[s], st.kernels),
                                          ("expand_ratios", arch.expand_ratios[s], st.expand_ratios)):
                if len(genes) != st.max_depth:
                    raise ValueError(f"Arch.{field}[stage {s}] has {len(genes)} entries; it needs one per block "
                                     f"up to the stage's maximum depth {st.max_depth} (0 past the active depth)")
                for b in range(arch.depths[s]):
                    if genes[b] not in allowed:
                        raise bad(field, f"stage {s}][block {b}", genes[b], allowed)
        if arch.final_width not in self.final_widths:
            raise ValueError(f"Arch.final_width = {arch.final_width} is not allowed; "
                             f"choose one of {', '.join(map(str, self.final_widths))}")
        return arch

    def num_subnets(self) -> int:
        """Number of distinct subnets (exact; exit heads not counted)."""
        total = len(self.final_widths)
        for st in self.stages:
            per_block = len(st.kernels) * len(st.expand_ratios)
            total *= len(st.widths) * sum(per_block ** d for d in st.depths)
        return total

    def space_hash(self) -> str:
        """Stable id of the space config: a supernet checkpoint or cost table belongs to one space."""
        return json_digest(dataclasses.asdict(self.cfg), compact=True)

    # ------------------------------------------------------------------ exits
    def _build_positions(self, mode: str) -> list[ExitPosition]:
        positions: list[ExitPosition] = []
        for st in self.stages[:-1]:
            blocks: list[int | None] = [None] if mode == "stage" else list(range(st.max_depth))
            for b in blocks:
                positions.append(ExitPosition(len(positions), st.index, b, st.out_size, st.widths))
        return positions

    def exit_positions(self) -> list[ExitPosition]:
        """Every candidate position (``available_exits`` says which an arch has)."""
        return list(self._positions)

    def available_exits(self, arch: Arch) -> list[int]:
        return [p.index for p in self._positions if p.available(arch)]

    def exit_position_of(self, stage: int, block: int, arch: Arch) -> int | None:
        """The candidate position fed by the output of ``(stage, block)`` for ``arch``, if any."""
        for p in self._positions:
            if p.stage == stage and p.available(arch) and p.after_block(arch) == block:
                return p.index
        return None

    # ------------------------------------------------------------------ shapes
    def block_specs(self, arch: Arch) -> list[BlockSpec]:
        """Shapes of every active block of ``arch``, in network order."""
        self.validate(arch)
        specs = []
        in_c = self.stem_channels
        for s, st in enumerate(self.stages):
            out_c = arch.widths[s]
            for b in range(arch.depths[s]):
                e = arch.expand_ratios[s][b]
                mid = self.mid_channels(in_c, e)
                stride = st.stride if b == 0 else 1
                specs.append(BlockSpec(
                    stage=s, block=b, in_channels=in_c, mid_channels=mid, out_channels=out_c,
                    kernel=arch.kernels[s][b], stride=stride, expand=e != 1,
                    se_channels=self.se_channels(mid) if st.se else 0, act=st.act,
                    residual=stride == 1 and in_c == out_c,
                    in_size=st.in_size if b == 0 else st.out_size, out_size=st.out_size))
                in_c = out_c
        return specs

    @property
    def final_size(self) -> int:
        return self.stages[-1].out_size

    def __repr__(self) -> str:
        return (f"SearchSpace({len(self.stages)} stages, {self.cfg.input_size}px x{self.cfg.in_channels}, "
                f"{len(self._positions)} exit positions, {self.num_subnets():.3g} subnets)")
