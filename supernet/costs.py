"""The calibrated cost table of a search space and the exact cost model of an early-exit network.

Convention (metric ``macs``): MACs are the multiply-accumulates of convolutions and linear
layers for one image (batch 1), counted by ptflops with its ``aten`` backend, which sees every
``aten.convolution`` / ``addmm`` / ``mm`` that actually runs: one MAC per weight use, plus one
per output element when the layer has a bias (ptflops's convention for both convs and linears).
BatchNorm, activations, pooling, means, the squeeze-excite gate multiply and residual adds
count zero; this is NACHOS's convention. The ``pytorch`` backend is not used because its
module hooks add BN, activation and pooling element counts. Parameters are counted alongside
(``numel`` of every parameter; BN running statistics are buffers, not parameters).

The table (``MacTable``) holds one entry per distinct module configuration the space can
produce, each MEASURED once (never a hand formula) on the static module that ``StaticEENet``
builds for it, with its parameter count:

- the stem;
- each MBConv block configuration (input resolution, in / expanded / out channels, kernel,
  stride, squeeze-excite width, activation, expand conv on/off, residual on/off);
- each exit head at each candidate position's resolution, per input channel count the space
  allows there (head design, width, classes and confidence output are fixed by the table's
  head settings);
- the final classifier per last-stage width x final width.

Entries are keyed by canonical strings such as
``block(size=16,in=16,mid=48,out=24,k=5,stride=2,se=0,act=relu,expand=1,residual=0)``. A
network's cost is a sum of entries; as MACs and parameters are additive over the modules that
``StaticEENet`` runs, the table's sums equal ptflops on the extracted network exactly
(``nachos macs verify`` checks it). Entries missing from a table (e.g. one built by an older
enumeration) are measured on first use and persisted with the table.

Files: ``<run_dir>/macs.json`` and ``<run_dir>/latency-<cpu|cuda>.json`` (``table_path``),
JSON with the space hash, the head-settings hash, the metric, the convention and the entries.
A table of another space or other head settings is refused (``TableMismatchError``) with both
hashes and the rebuild command. A run folder belongs to one config, so the run folder is the
natural home; the table itself is keyed by the hashes, so a copy is safe to reuse elsewhere.

Metric ``latency``: seconds per image at batch 1 on the measuring device (eval mode,
``torch.inference_mode``), the median of every timed call of the entry's module made while it
ran INSIDE carrier networks: chains of table modules built like ``StaticEENet`` (every exit
attached) that together contain every entry (one per stage variant, other genes random).
Timing a module alone in a loop keeps its weights, code and allocator state hot: on this
project's CPU networks such sums came out 17-30% below the measured networks (CPU time); in
situ, they land within about 5% (median) of the measured end-to-end latency. On CPU the clock is
the process's CPU time when torch runs one thread (the CLI measures CPU latency with
``num_threads`` or 1 thread), so that other processes on a shared machine do not inflate it by
preemption; wall time with several threads. On CUDA, CUDA events around each module (no sync in
between). Latency sums are a model, not an identity: ``nachos macs verify --metric latency``
reports their error against whole extracted networks.

Cost of an early-exit network (``P`` candidate exit positions of the space):
- ``backbone_costs(arch)`` (P+1,): stem .. the block feeding position p; NaN where the arch
  has no such position (``exit_positions: block`` with a shallower stage); last entry: the
  whole backbone to the final logits (stem, every block, final classifier).
- ``head_costs(arch)`` (P,): the exit head at p for this arch's width there (NaN: unavailable).
- ``exit_costs(arch, exit_ids)`` (E+1,): leaving at selected exit i costs the backbone up to it
  plus EVERY selected head up to and including i (a sample evaluates each earlier head before
  moving on; NACHOS's reference code forgets those); leaving at the final classifier costs the
  whole backbone plus all selected heads. Peak = last entry.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import math
import platform
import random
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from nachos.config import Config, ExitsConfig, SpaceConfig
from nachos.runtime import RunError, atomic_write_text, json_digest, resolve_device, synchronize
from supernet.space import Arch, BlockSpec, SearchSpace
from supernet.static import FinalClassifier, HeadSettings, MBConv, StaticEENet, make_stem

METRICS: tuple[str, ...] = ("macs", "latency")
UNITS: dict[str, str] = {"macs": "MACs", "latency": "s"}
FORMAT = "nachos-cost-table"
VERSION = 1
CONVENTION = ("MACs of convolutions and linear layers (ptflops aten backend, batch 1; one per weight use plus one "
              "per output element for a bias); BN, activations, pooling, means, SE gate and residual adds count 0")
LATENCY_CONVENTION = ("median seconds per image at batch 1 of each module timed inside carrier networks, eval mode, "
                      "inference_mode; CPU: process CPU time with 1 torch thread, else wall time; CUDA: events")
LATENCY_WARMUP = 5
LATENCY_ROUNDS = 15
LATENCY_ROUND_S = 2e-3  # calls per round are chosen so that a round lasts about this long
ARCH_CACHE_SIZE = 1 << 16


class TableMismatchError(RunError):
    """The table on disk belongs to another space, other head settings or another metric."""


# ----------------------------------------------------------------------------- measuring
def count_macs(module: nn.Module, input_shape: Sequence[int], *, copy_module: bool = True) -> int:
    """MACs (module docstring's convention) of one forward of ``module`` on one ``(C, H, W)`` input."""
    from ptflops import get_model_complexity_info

    # ptflops leaves forward hooks behind and switches to eval: count a copy unless throwaway
    probe = copy.deepcopy(module) if copy_module else module
    probe = probe.cpu()
    shape = tuple(int(s) for s in input_shape)
    macs, _ = get_model_complexity_info(probe, shape, as_strings=False, print_per_layer_stat=False,
                                        backend="aten", input_constructor=lambda s: torch.zeros(1, *s),
                                        ost=io.StringIO())
    if macs is None:
        raise RuntimeError(f"ptflops could not count the MACs of {type(module).__name__} on {shape}")
    return int(macs)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cpu_clock() -> Callable[[], float]:
    """The CPU latency clock: the process's CPU time when torch runs one thread (the time a
    process that had the core to itself would take; preemption on a shared machine does not
    inflate it), wall time when intra-op threads run in parallel (CPU time would add them up)."""
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


@torch.inference_mode()
def measure_latency(module: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu", *,
                    warmup: int = LATENCY_WARMUP, rounds: int = LATENCY_ROUNDS,
                    round_s: float = LATENCY_ROUND_S) -> float:
    """Median seconds per call of ``module`` alone on one ``(C, H, W)`` input (batch 1, eval mode);
    used for whole networks, and for table entries only as a fallback (see ``time_in_situ``)."""
    device = torch.device(device)
    clock = cpu_clock() if device.type == "cpu" else time.perf_counter
    module = module.to(device).eval()
    x = torch.randn(1, *input_shape, device=device)
    for _ in range(warmup):
        module(x)
    synchronize(device)
    start = clock()
    module(x)
    synchronize(device)
    calls = max(1, min(1000, int(round_s / max(clock() - start, 1e-6))))
    per_call = []
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            module(x)
        synchronize(device)
        per_call.append((clock() - start) / calls)
    return float(statistics.median(per_call))


@torch.inference_mode()
def time_in_situ(chain: Sequence[tuple[nn.Module, bool]], input_shape: Sequence[int], device: torch.device, *,
                 warmup: int = 2, repeats: int = 5) -> np.ndarray:
    """Seconds (repeats, modules) of each module of ``chain`` while the chain runs as a network does.

    ``chain`` lists (module, is_head) in execution order: a backbone module feeds the next
    one, a head reads the current map and its output is dropped. Timing a module inside the
    chain charges it what a whole network pays and an isolated module loop does not: weights,
    code and allocator state evicted by its neighbours (on this project's CPU networks the
    isolated loop is 17-30% faster than the network). On CUDA, events around each module
    measure the GPU timeline, launch gaps included, without synchronising between modules.
    """
    cuda = device.type == "cuda"
    clock = cpu_clock()
    x0 = torch.randn(1, *input_shape, device=device)
    obs: list[list[float]] = []
    for r in range(warmup + repeats):
        marks: list[Any] = []
        x = x0
        for module, is_head in chain:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                y = module(x)
                end.record()
                marks.append((start, end))
            else:
                t = clock()
                y = module(x)
                marks.append(clock() - t)
            if not is_head:
                x = y
        if r >= warmup:
            if cuda:
                torch.cuda.synchronize(device)
                marks = [s.elapsed_time(e) / 1e3 for s, e in marks]
            obs.append(marks)
    return np.asarray(obs, dtype=np.float64)


def device_name(device: torch.device) -> str:
    """What a latency was measured on: the device model and, on CPU, torch's thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"cpu: {model}, {n} thread{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- entries
class Item(NamedTuple):
    """One table entry to measure: its key, the input it takes, and how to build the module."""

    key: str
    input_shape: tuple[int, int, int]
    make: Callable[[], nn.Module]


def stem_item(space: SearchSpace) -> Item:
    c = space.cfg
    key = (f"stem(size={c.input_size},in={c.in_channels},out={c.stem_channels},stride={c.stem_stride},"
           f"act={space.stages[0].act})")
    return Item(key, (c.in_channels, c.input_size, c.input_size), lambda: make_stem(space))


def block_key(spec: BlockSpec) -> str:
    # out_size follows from size and stride, and stage / block index do not shape the module
    return (f"block(size={spec.in_size},in={spec.in_channels},mid={spec.mid_channels},out={spec.out_channels},"
            f"k={spec.kernel},stride={spec.stride},se={spec.se_channels},act={spec.act},"
            f"expand={int(spec.expand)},residual={int(spec.residual)})")


def block_item(spec: BlockSpec) -> Item:
    return Item(block_key(spec), (spec.in_channels, spec.in_size, spec.in_size), lambda: MBConv(spec))


def head_key(heads: HeadSettings, num_classes: int, size: int, channels: int) -> str:
    return (f"head(kind={heads.kind},size={size},in={channels},width={heads.width},classes={num_classes},"
            f"conf={int(heads.confidence_output)})")


def head_item(space: SearchSpace, heads: HeadSettings, size: int, channels: int) -> Item:
    n = space.num_classes

    def make() -> nn.Module:
        # exactly what StaticEENet builds for an exit at this resolution and width
        return heads.create(channels, size, n).extract(channels)

    return Item(head_key(heads, n, size, channels), (channels, size, size), make)


def final_key(space: SearchSpace, in_channels: int, width: int) -> str:
    return (f"final(size={space.final_size},in={in_channels},width={width},classes={space.num_classes},"
            f"act={space.stages[-1].act})")


def final_item(space: SearchSpace, in_channels: int, width: int) -> Item:
    size = space.final_size
    return Item(final_key(space, in_channels, width), (in_channels, size, size),
                lambda: FinalClassifier(in_channels, width, space.num_classes, space.stages[-1].act, space.cfg.dropout))


def _stage_variants(space: SearchSpace, s: int, base: Callable[[], Arch] | None = None) -> Iterable[Arch]:
    """Archs whose stage ``s`` runs, at full depth, every (input width, width, kernel, ratio)
    combination: their block specs cover every block configuration stage ``s`` can produce
    (block 0 depends on the input width, later blocks only on the stage's own genes). The other
    genes come from ``base()`` (default: the largest arch)."""
    st = space.stages[s]
    prev = space.stages[s - 1].widths if s > 0 else (None,)
    for w_prev in prev:
        for w in st.widths:
            for k in st.kernels:
                for e in st.expand_ratios:
                    b = space.largest() if base is None else base()
                    depths, widths = list(b.depths), list(b.widths)
                    kernels, ratios = list(b.kernels), list(b.expand_ratios)
                    depths[s] = st.max_depth
                    if w_prev is not None:
                        widths[s - 1] = w_prev
                    widths[s] = w
                    kernels[s] = (k,) * st.max_depth
                    ratios[s] = (e,) * st.max_depth
                    yield Arch(tuple(depths), tuple(kernels), tuple(ratios), tuple(widths), b.final_width)


def enumerate_items(space: SearchSpace, heads: HeadSettings) -> dict[str, Item]:
    """Every entry the space can produce, by key (blocks come from ``space.block_specs`` itself,
    so the enumeration cannot disagree with the shapes a real arch gets)."""
    items: dict[str, Item] = {}

    def add(item: Item) -> None:
        items.setdefault(item.key, item)

    add(stem_item(space))
    for s in range(len(space.stages)):
        for arch in _stage_variants(space, s):
            for spec in space.block_specs(arch):
                if spec.stage == s:
                    add(block_item(spec))
    for p in space.exit_positions():
        for c in p.channels:
            add(head_item(space, heads, p.resolution, c))
    for c in space.stages[-1].widths:
        for w in space.final_widths:
            add(final_item(space, c, w))
    return items


def network_items(space: SearchSpace, heads: HeadSettings, arch: Arch,
                  exit_ids: Sequence[int]) -> list[tuple[Item, bool]]:
    """(item, is_head) of every module ``StaticEENet(arch, exit_ids)`` runs, in execution order."""
    positions = space.exit_positions()
    selected = set(exit_ids)
    out = [(stem_item(space), False)]
    for spec in space.block_specs(arch):
        out.append((block_item(spec), False))
        pos = space.exit_position_of(spec.stage, spec.block, arch)
        if pos is not None and pos in selected:
            p = positions[pos]
            out.append((head_item(space, heads, p.resolution, arch.widths[p.stage]), True))
    out.append((final_item(space, arch.widths[-1], arch.final_width), False))
    return out


def carrier_chains(space: SearchSpace, heads: HeadSettings, rng: random.Random) -> Iterable[list[tuple[Item, bool]]]:
    """Networks (every available exit attached) that together contain every table entry: one per
    stage variant of ``_stage_variants``, the other genes random so that neighbours vary."""
    for s in range(len(space.stages)):
        for arch in _stage_variants(space, s, base=lambda: space.sample(rng)):
            yield network_items(space, heads, arch, space.available_exits(arch))


def heads_hash(heads: HeadSettings, num_classes: int) -> str:
    """Stable id of everything that shapes an exit head beyond the space (classes are in both).
    ``max_map`` came later: it enters only when set away from its default, so that tables
    measured before it existed (all built with the default) keep their id."""
    settings = heads.to_dict()
    if heads.max_map == HeadSettings.max_map:
        del settings["max_map"]
    return json_digest({**settings, "num_classes": num_classes}, compact=True)


def table_path(cfg: Config, metric: str = "macs", device: torch.device | str | None = None) -> Path:
    """Default file of a run's table: ``macs.json``, or ``latency-<cpu|cuda>.json`` for the device."""
    if metric == "macs":
        return cfg.run_dir / "macs.json"
    dev = resolve_device(cfg.device) if device is None else torch.device(device)
    return cfg.run_dir / f"latency-{dev.type}.json"


def rebuild_hint(metric: str) -> str:
    return f"nachos macs build --metric {metric} --config <this run's config>"


# ----------------------------------------------------------------------------- the table
class _ArchCosts(NamedTuple):
    backbone: tuple[float, ...]  # (P+1,), NaN where the arch has no such position
    heads: tuple[float, ...]  # (P,), NaN likewise
    backbone_params: int
    head_params: tuple[int, ...]  # (P,), 0 where unavailable


class MacTable:
    """Calibrated per-module costs of one space with one head design; cost model of an EENN."""

    def __init__(self, space: SearchSpace | SpaceConfig, exits: HeadSettings | ExitsConfig | Mapping[str, Any],
                 metric: str = "macs", entries: Mapping[str, tuple[float, int]] | None = None, *,
                 path: str | Path | None = None, device: torch.device | str = "cpu",
                 meta: Mapping[str, Any] | None = None, progress: bool = False) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}; choose one of {', '.join(METRICS)}")
        self.space = space if isinstance(space, SearchSpace) else SearchSpace.from_config(space)
        self.heads = HeadSettings.from_exits(exits)
        self.metric = metric
        self.unit = UNITS[metric]
        self.space_hash = self.space.space_hash()
        self.heads_hash = heads_hash(self.heads, self.space.num_classes)
        self.device = torch.device(device) if metric == "latency" else torch.device("cpu")
        self.entries: dict[str, tuple[float, int]] = dict(entries or {})
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.setdefault("device", device_name(self.device) if metric == "latency" else "any")
        self.progress = progress
        self.measured_now = 0  # entries measured by this object (build or lazy fill)
        self._positions = self.space.exit_positions()
        self._stage_positions = [[p for p in self._positions if p.stage == st.index] for st in self.space.stages]
        self._stage_sets = [(frozenset(st.depths), frozenset(st.widths), st.max_depth) for st in self.space.stages]
        self._finals = frozenset(self.space.final_widths)
        self._block_memo: dict[tuple[int, bool, int, int, int, int], tuple[float, int]] = {}
        self._head_memo: dict[tuple[int, int], tuple[float, int]] = {}
        self._final_memo: dict[tuple[int, int], tuple[float, int]] = {}
        self._stem_entry: tuple[float, int] | None = None
        self._cache: OrderedDict[Arch, _ArchCosts] = OrderedDict()
        self._dirty = False

    # ------------------------------------------------------------------ measuring entries
    def fill(self, items: Iterable[Item], progress: bool | None = None) -> int:
        """Measure every item not in the table yet; returns how many were measured."""
        from tqdm import tqdm

        todo = list({it.key: it for it in items if it.key not in self.entries}.values())
        if not todo:
            return 0
        show = self.progress if progress is None else progress
        # the modules measured here draw random initial weights (and latency inputs): a table built lazily in a
        # seeded run (supernet training) must not move that run's RNG, or its dropout masks depend on whether
        # macs.json already existed
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.metric == "macs":
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # counts do not depend on it, and threads only slow tiny forwards down
                try:
                    for item in tqdm(todo, desc="macs table", unit="entry", disable=not show, mininterval=1.0,
                                     dynamic_ncols=True):
                        module = item.make()
                        self.entries[item.key] = (count_macs(module, item.input_shape, copy_module=False),
                                                  count_params(module))
                finally:
                    torch.set_num_threads(threads)
            else:
                self._fill_latency(todo, show)
        self.measured_now += len(todo)
        self._dirty = True
        return len(todo)

    def _fill_latency(self, todo: list[Item], show: bool) -> None:
        from tqdm import tqdm

        here = device_name(self.device)
        if self.meta.get("device") != here:
            raise RunError(f"latency table {self.path or ''} was measured on {self.meta.get('device')!r}; it lacks "
                           f"{todo[0].key} and this process runs on {here!r}: rebuild it on the target device: "
                           f"{rebuild_hint(self.metric)}")
        want = {it.key for it in todo}
        modules: dict[tuple[str, int], nn.Module] = {}
        obs: dict[str, list[float]] = {}

        def module_of(item: Item, slot: int = 0) -> nn.Module:
            # ``slot``: how many times the entry came before in this carrier. A stage repeats a block's
            # configuration, and one object run back to back would be timed with its weights already in
            # cache, as no real network runs; a copy per repeat (not per position) keeps memory low
            if (item.key, slot) not in modules:
                modules[item.key, slot] = item.make().to(self.device).eval()
            return modules[item.key, slot]

        # A single missing entry (lazy fill) is timed alone; a build times every entry inside
        # carrier networks that together contain every configuration (see time_in_situ).
        if len(todo) > 1:
            rng = random.Random(0)
            chains = [c for c in carrier_chains(self.space, self.heads, rng) if any(it.key in want for it, _ in c)]
            for chain in tqdm(chains, desc="latency table", unit="net", disable=not show, mininterval=1.0,
                              dynamic_ncols=True):
                keys = [it.key for it, _ in chain]
                pairs = [(module_of(it, keys[:j].count(it.key)), head) for j, (it, head) in enumerate(chain)]
                times = time_in_situ(pairs, chain[0][0].input_shape, self.device)
                for j, (it, _) in enumerate(chain):
                    if it.key in want:
                        obs.setdefault(it.key, []).extend(times[:, j].tolist())
        for item in todo:
            module = module_of(item)
            seen = obs.get(item.key)
            # the median of every in-situ call of this entry, whichever carrier it sat in
            cost = float(statistics.median(seen)) if seen else measure_latency(module, item.input_shape, self.device)
            self.entries[item.key] = (cost, count_params(module))

    def _lookup(self, item_key: str, make_item: Callable[[], Item]) -> tuple[float, int]:
        hit = self.entries.get(item_key)
        if hit is None:
            self.fill([make_item()], progress=False)
            hit = self.entries[item_key]
        return hit

    # ------------------------------------------------------------------ building, files
    @classmethod
    def build(cls, space: SearchSpace | SpaceConfig, exits: HeadSettings | ExitsConfig | Mapping[str, Any],
              metric: str = "macs", *, device: torch.device | str = "cpu", path: str | Path | None = None,
              progress: bool = True) -> MacTable:
        """Measure every entry the space can produce (and save to ``path`` when given)."""
        table = cls(space, exits, metric, path=path, device=device, progress=progress)
        start = time.perf_counter()
        table.fill(enumerate_items(table.space, table.heads).values())
        table.meta["build_seconds"] = round(time.perf_counter() - start, 3)
        if path is not None:
            table.save()
        return table

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | SpaceConfig,
             exits: HeadSettings | ExitsConfig | Mapping[str, Any], metric: str = "macs", *,
             device: torch.device | str = "cpu", progress: bool = False) -> MacTable:
        """Read ``path`` and check that it belongs to this space, these heads and this metric."""
        path = Path(path)
        if not isinstance(space, SearchSpace):
            space = SearchSpace.from_config(space)
        heads = HeadSettings.from_exits(exits)
        try:
            data = json.loads(path.read_text())
            ok = isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("entries"), dict)
        except (OSError, ValueError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise RunError(f"cannot read cost table {path} ({type(err).__name__}: {err}); delete it or rebuild it: "
                           f"{rebuild_hint(metric)}") from None
        if not ok:
            raise RunError(f"{path} is not a {FORMAT} file; delete it or rebuild it: {rebuild_hint(metric)}")
        if data.get("version") != VERSION:
            raise TableMismatchError(f"cost table {path} has format version {data.get('version')}, this code reads "
                                     f"{VERSION}; rebuild it: {rebuild_hint(metric)}")
        ours_space, ours_heads = space.space_hash(), heads_hash(heads, space.num_classes)
        theirs_space, theirs_heads = data.get("space_hash"), data.get("heads_hash")
        if data.get("metric") != metric:
            raise TableMismatchError(f"cost table {path} holds {data.get('metric')!r}, not {metric!r}; "
                                     f"rebuild it: {rebuild_hint(metric)}")
        if theirs_space != ours_space or theirs_heads != ours_heads:
            raise TableMismatchError(
                f"cost table {path} was built for search space {theirs_space} with head settings {theirs_heads} "
                f"({data.get('head_settings')}), but this config has search space {ours_space} with head settings "
                f"{ours_heads} ({heads.to_dict()}); rebuild it (it is overwritten): {rebuild_hint(metric)}")
        try:
            entries = {str(k): (v["cost"], int(v["params"])) for k, v in data["entries"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise RunError(f"cost table {path} has a malformed entry ({type(err).__name__}: {err}); delete it or "
                           f"rebuild it: {rebuild_hint(metric)}") from None
        return cls(space, heads, metric, entries, path=path, device=device, meta=data.get("meta", {}),
                   progress=progress)

    @classmethod
    def load_or_build(cls, space: SearchSpace | SpaceConfig, exits_cfg: HeadSettings | ExitsConfig | Mapping[str, Any],
                      path: str | Path, metric: str = "macs", *, device: torch.device | str | None = None,
                      progress: bool = True) -> MacTable:
        """The table at ``path``; built (every entry, then saved) when the file does not exist.
        A table of another space / head settings / metric raises ``TableMismatchError``.
        ``device`` (latency only) defaults to cuda when available, else cpu."""
        dev = resolve_device("auto") if device is None else torch.device(device)
        try:
            return cls.load(path, space, exits_cfg, metric, device=dev, progress=progress)
        except FileNotFoundError:
            return cls.build(space, exits_cfg, metric, device=dev, path=path, progress=progress)

    @classmethod
    def from_config(cls, cfg: Config, metric: str = "macs", path: str | Path | None = None) -> MacTable:
        """``load_or_build`` at the run's default path (``table_path``) on the config's device."""
        device = resolve_device(cfg.device)
        return cls.load_or_build(SearchSpace.from_config(cfg.space), cfg.exits,
                                 table_path(cfg, metric, device) if path is None else path, metric, device=device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "metric": self.metric, "unit": self.unit,
            "convention": CONVENTION if self.metric == "macs" else LATENCY_CONVENTION,
            "space_hash": self.space_hash, "heads_hash": self.heads_hash, "head_settings": self.heads.to_dict(),
            "space": dataclasses.asdict(self.space.cfg),
            "meta": {**self.meta, "torch": torch.__version__, "entries": len(self.entries)},
            "entries": {k: {"cost": c, "params": p} for k, (c, p) in sorted(self.entries.items())},
        }

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("MacTable.save: no path given and the table has none")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        self.path = path
        self._dirty = False
        return path

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __repr__(self) -> str:
        return (f"MacTable({self.metric}, {len(self.entries)} entries, space {self.space_hash}, "
                f"heads {self.heads_hash}, {self.path})")

    def counts_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.entries:
            kind = k.split("(", 1)[0]
            out[kind] = out.get(kind, 0) + 1
        return out

    # ------------------------------------------------------------------ cost model
    # A cold lookup must stay far below a ptflops count (~0.1 s), so block entries are memoised
    # by their genes (stage, first block?, in width, out width, kernel, ratio): together with the
    # space these fix the block's shapes. A gene tuple not seen yet is learnt from
    # ``space.block_specs`` (the one source of shapes) for the whole arch; the costs sum in
    # Python floats (MAC counts are integers, exact in float64 below 2**53).
    def _learn_blocks(self, arch: Arch) -> None:
        for spec in self.space.block_specs(arch):  # validates the arch too
            genes = (spec.stage, spec.block == 0, spec.in_channels, spec.out_channels, spec.kernel,
                     arch.expand_ratios[spec.stage][spec.block])
            if genes not in self._block_memo:
                self._block_memo[genes] = self._lookup(block_key(spec), lambda spec=spec: block_item(spec))

    def _head(self, size: int, c: int) -> tuple[float, int]:
        hit = self._head_memo.get((size, c))
        if hit is None:
            space, heads = self.space, self.heads
            hit = self._head_memo[(size, c)] = self._lookup(head_key(heads, space.num_classes, size, c),
                                                            lambda: head_item(space, heads, size, c))
        return hit

    def _final(self, c: int, width: int) -> tuple[float, int]:
        hit = self._final_memo.get((c, width))
        if hit is None:
            space = self.space
            hit = self._final_memo[(c, width)] = self._lookup(final_key(space, c, width),
                                                              lambda: final_item(space, c, width))
        return hit

    def _plausible(self, arch: Arch) -> bool:
        """Cheap check of the genes that the block memo cannot vouch for (depth, widths, lengths)."""
        if len(arch.depths) != len(self._stage_sets) or arch.final_width not in self._finals:
            return False
        for (depths, widths, max_depth), d, w, ks, es in zip(self._stage_sets, arch.depths, arch.widths,
                                                             arch.kernels, arch.expand_ratios):
            if d not in depths or w not in widths or len(ks) != max_depth or len(es) != max_depth:
                return False
        return True

    def _arch(self, arch: Arch) -> _ArchCosts:
        hit = self._cache.get(arch)
        if hit is not None:
            self._cache.move_to_end(arch)
            return hit
        if not self._plausible(arch):
            self.space.validate(arch)  # raises with the offending gene
        P = len(self._positions)
        backbone = [math.nan] * (P + 1)
        head = [math.nan] * P
        head_params = [0] * P
        memo = self._block_memo
        total, params = self._stem()
        prev = self.space.stem_channels
        for s, (d, w, ks, es) in enumerate(zip(arch.depths, arch.widths, arch.kernels, arch.expand_ratios)):
            exit_after = {p.after_block(arch): p for p in self._stage_positions[s] if p.available(arch)}
            for b in range(d):
                genes = (s, b == 0, prev if b == 0 else w, w, ks[b], es[b])
                entry = memo.get(genes)
                if entry is None:
                    self._learn_blocks(arch)
                    entry = memo[genes]
                total += entry[0]
                params += entry[1]
                p = exit_after.get(b)
                if p is not None:
                    backbone[p.index] = total
                    head[p.index], head_params[p.index] = self._head(p.resolution, w)
            prev = w
        cost, n = self._final(prev, arch.final_width)
        backbone[P] = total + cost
        out = _ArchCosts(tuple(backbone), tuple(head), int(params + n), tuple(head_params))
        if self._dirty and self.path is not None:
            self.save()  # lazily measured entries persist for the next process
        self._cache[arch] = out
        if len(self._cache) > ARCH_CACHE_SIZE:
            self._cache.popitem(last=False)
        return out

    def _stem(self) -> tuple[float, int]:
        if self._stem_entry is None:
            item = stem_item(self.space)
            self._stem_entry = self._lookup(item.key, lambda: item)
        return self._stem_entry

    def _ids(self, arch: Arch, costs: _ArchCosts, exit_ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in exit_ids]
        last = -1
        for i in ids:
            if i <= last or i >= len(costs.heads) or costs.heads[i] != costs.heads[i]:  # NaN: unavailable
                raise ValueError(f"exit_ids={ids}: must be strictly increasing positions available to the arch; "
                                 f"available: {self.space.available_exits(arch)}")
            last = i
        return ids

    def backbone_costs(self, arch: Arch) -> np.ndarray:
        """(P+1,) stem .. block feeding each candidate position (NaN: not in this arch), then to the final logits."""
        return np.array(self._arch(arch).backbone, dtype=np.float64)

    def head_costs(self, arch: Arch) -> np.ndarray:
        """(P,) cost of each candidate exit head at this arch's widths (NaN: position not in this arch)."""
        return np.array(self._arch(arch).heads, dtype=np.float64)

    def exit_costs(self, arch: Arch, exit_ids: Sequence[int]) -> np.ndarray:
        """(E+1,) cumulative cost of leaving at each selected exit (backbone up to it + every selected head
        up to and including it), then at the final classifier (whole backbone + all selected heads)."""
        c = self._arch(arch)
        out = []
        heads = 0.0
        for i in self._ids(arch, c, exit_ids):
            heads += c.heads[i]
            out.append(c.backbone[i] + heads)
        out.append(c.backbone[-1] + heads)
        return np.array(out, dtype=np.float64)

    def peak_cost(self, arch: Arch, exit_ids: Sequence[int]) -> float:
        """Cost of a sample that goes all the way: whole backbone + every selected head."""
        return float(self.exit_costs(arch, exit_ids)[-1])

    def params(self, arch: Arch, exit_ids: Sequence[int]) -> int:
        """Parameters of the static network: stem, blocks, final classifier and the selected heads."""
        c = self._arch(arch)
        return int(c.backbone_params + sum(c.head_params[i] for i in self._ids(arch, c, exit_ids)))


# ----------------------------------------------------------------------------- ground truth
def segment_macs(net: StaticEENet) -> tuple[list[int], list[int]]:
    """ptflops on every backbone segment and every selected head of an extracted network."""
    segs = [count_macs(s, shape) for s, shape in zip(net.segments, net.segment_input_shapes)]
    heads = [count_macs(h, shape) for h, shape in zip(net.heads, net.head_input_shapes)]
    return segs, heads


def profile_exit_costs(net: StaticEENet) -> np.ndarray:
    """ptflops on an extracted network's segments and heads, cumulated as ``exit_costs`` does."""
    segs, heads = (np.array(m, dtype=np.int64) for m in segment_macs(net))
    backbone, cum_heads = np.cumsum(segs), np.cumsum(heads)
    exits = backbone[:len(heads)] + cum_heads
    return np.append(exits, backbone[-1] + (cum_heads[-1] if len(heads) else 0)).astype(np.float64)


def random_exit_set(space: SearchSpace, arch: Arch, rng: random.Random) -> list[int]:
    avail = space.available_exits(arch)
    return sorted(rng.sample(avail, rng.randint(0, len(avail))))


class MacsCheck(NamedTuple):
    samples: int
    max_prefix_diff: float  # table exit_costs vs ptflops on segments + heads
    max_total_diff: float  # table peak vs ptflops on the whole network at once
    max_params_diff: int


def verify_macs(supernet: nn.Module, table: MacTable, samples: int, seed: int = 0,
                progress: bool = False) -> MacsCheck:
    """Largest differences between the table and ptflops on ``samples`` random extracted subnets."""
    from tqdm import tqdm

    rng = random.Random(seed)
    space = table.space
    prefix = total = params = 0.0
    for _ in tqdm(range(samples), desc="verify", disable=not progress, mininterval=1.0,
                  dynamic_ncols=True):
        arch = space.sample(rng)
        ids = random_exit_set(space, arch, rng)
        net = supernet.extract(arch, ids).cpu().eval()
        want = table.exit_costs(arch, ids)
        prefix = max(prefix, float(np.abs(profile_exit_costs(net) - want).max()))
        whole = count_macs(net, net.segment_input_shapes[0])
        total = max(total, abs(whole - want[-1]))
        params = max(params, abs(count_params(net) - table.params(arch, ids)))
    return MacsCheck(samples, prefix, total, int(params))


class LatencyCheck(NamedTuple):
    samples: int
    median_rel_error: float  # |table - measured| / measured
    mean_signed_rel_error: float  # > 0: the table overestimates
    max_rel_error: float
    median_measured_s: float


def verify_latency(supernet: nn.Module, table: MacTable, samples: int, seed: int = 0,
                   progress: bool = False) -> LatencyCheck:
    """Table peak latency vs measured end-to-end latency (every selected head evaluated) of random subnets."""
    from tqdm import tqdm

    rng = random.Random(seed)
    space = table.space
    errs, measured = [], []
    for _ in tqdm(range(samples), desc="verify latency", disable=not progress, mininterval=1.0,
                  dynamic_ncols=True):
        arch = space.sample(rng)
        ids = random_exit_set(space, arch, rng)
        net = supernet.extract(arch, ids)
        t = measure_latency(net, net.segment_input_shapes[0], table.device)
        errs.append((table.peak_cost(arch, ids) - t) / t)
        measured.append(t)
    a = np.abs(errs)
    return LatencyCheck(samples, float(np.median(a)), float(np.mean(errs)), float(a.max()), float(np.median(measured)))


# ----------------------------------------------------------------------------- CLI
def _fmt(metric: str, value: float) -> str:
    return f"{value / 1e6:.3f} M MACs" if metric == "macs" else f"{value * 1e3:.3f} ms"


def macs_command(cfg: Config, args: argparse.Namespace) -> int:
    """``nachos macs build|verify [--metric macs|latency] [--samples N]``."""
    action = getattr(args, "action", None)
    metric = getattr(args, "metric", "macs") or "macs"
    samples = int(getattr(args, "samples", 20) or 20)
    if action not in ("build", "verify"):
        raise RunError(f"nachos macs: the action must be build or verify, got {action!r}; e.g. nachos macs build "
                       "--config configs/cifar10.yaml")
    device = resolve_device(cfg.device) if metric == "latency" else torch.device("cpu")
    # batch-1 forwards of these small networks gain little from intra-op threads (counting even
    # loses), and one thread lets the latency clock ignore other processes of a shared machine
    torch.set_num_threads(cfg.num_threads or 1)
    space = SearchSpace.from_config(cfg.space)
    path = table_path(cfg, metric, device)
    if action == "build":
        n = len(enumerate_items(space, HeadSettings.from_exits(cfg.exits)))
        print(f"space {space.space_hash()} ({space.num_subnets():.3g} subnets), heads "
              f"{heads_hash(HeadSettings.from_exits(cfg.exits), space.num_classes)}: {n} distinct entries to measure "
              f"({metric}{', on ' + device_name(device) if metric == 'latency' else ''})", flush=True)
        table = MacTable.build(space, cfg.exits, metric, device=device, path=path, progress=True)
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(table.counts_by_kind().items()))
        print(f"built {len(table)} entries ({kinds}) in {table.meta['build_seconds']:.1f} s -> {path}")
        for name, arch in (("smallest", space.smallest()), ("largest", space.largest())):
            ids = space.available_exits(arch)
            print(f"{name}: backbone {_fmt(metric, table.backbone_costs(arch)[-1])}, with every exit "
                  f"{_fmt(metric, table.peak_cost(arch, ids))}, {table.params(arch, ids):,} params")
        return 0

    from supernet.network import create_supernet

    table = MacTable.load_or_build(space, cfg.exits, path, metric, device=device)
    measured = f" ({table.measured_now} entries measured now)" if table.measured_now else ""
    print(f"table {path}: {len(table)} entries{measured}; checking {samples} random (arch, exit set) pairs", flush=True)
    torch.manual_seed(cfg.seed)
    supernet = create_supernet(cfg).eval()
    if metric == "macs":
        check = verify_macs(supernet, table, samples, cfg.seed, progress=True)
        print(f"max |table - ptflops|: {check.max_prefix_diff:g} MACs over every exit prefix, "
              f"{check.max_total_diff:g} MACs on whole networks, {check.max_params_diff} params")
        ok = check.max_prefix_diff == 0 and check.max_total_diff == 0 and check.max_params_diff == 0
        print("OK: the table is exact" if ok else "MISMATCH: the table disagrees with ptflops; rebuild it: "
              + rebuild_hint(metric))
        return 0 if ok else 1
    supernet = supernet.to(table.device)
    lat = verify_latency(supernet, table, samples, cfg.seed, progress=True)
    print(f"latency on {table.meta.get('device')}: median |table - measured| / measured = "
          f"{lat.median_rel_error:.1%} (mean signed {lat.mean_signed_rel_error:+.1%}, max {lat.max_rel_error:.1%}), "
          f"median network {lat.median_measured_s * 1e3:.3f} ms")
    if lat.median_rel_error > 0.15:
        print("note: above the 15% goal (a loaded machine or a device other than the table's inflates it)")
    return 0


__all__ = ["CONVENTION", "LATENCY_CONVENTION", "METRICS", "Item", "LatencyCheck", "MacTable", "MacsCheck",
           "TableMismatchError", "block_key", "carrier_chains", "count_macs", "count_params", "device_name",
           "enumerate_items", "heads_hash", "macs_command", "measure_latency", "network_items", "profile_exit_costs",
           "random_exit_set", "segment_macs", "table_path", "time_in_situ", "verify_latency", "verify_macs"]
