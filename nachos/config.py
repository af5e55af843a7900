"""Run configuration: YAML files validated into dataclasses, overridable as ``key.sub=value``.

Precedence, lowest first: dataclass defaults < YAML file < the YAML's ``profiles.<device>``
block (applied once the device is known) < command-line overrides. Every error names the
key, the bad value and what is allowed, and is raised before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and what is allowed."""


def _f(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None, help: str = "", default_factory: Any = dataclasses.MISSING) -> Any:
    meta = {"choices": choices, "lo": lo, "hi": hi, "help": help}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- sections
@dataclass
class AugmentConfig:
    crop_padding: int = _f(4, lo=0, hi=16, help="random-crop padding in pixels (0 = off)")
    hflip: bool = _f(True, help="random horizontal flip (turn off for digits)")
    cutout: int = _f(0, lo=0, hi=32, help="cutout square side in pixels (0 = off)")


@dataclass
class DataConfig:
    name: str = _f("cifar10", choices=("cifar10", "cifar100", "mnist", "imagefolder"),
                   help="dataset kind")
    root: str = _f("", help="where the source data lives; empty = the usual places (../shared/datasets, data/)")
    cache_dir: str = _f("data/cache", help="git-ignored folder for the decoded uint8 tensor cache")
    download: bool = _f(False, help="allow torchvision to download the dataset (needs internet)")
    val_fraction: float = _f(0.1, lo=0.0, hi=0.5, help="class-balanced share of train held out for validation")
    train_subset: int = _f(0, lo=0, help="use only N training images (0 = all), for quick runs")
    val_subset: int = _f(0, lo=0, help="use only N validation images (0 = all)")
    batch_size: int = _f(256, lo=1, help="training batch size")
    eval_batch_size: int = _f(1024, lo=1, help="batch size for validation / calibration / search")
    augment: AugmentConfig = _f(default_factory=AugmentConfig)


@dataclass
class StageConfig:
    widths: list[int] = _f(default_factory=lambda: [32], help="output-channel choices of the stage")
    depths: list[int] = _f(default_factory=lambda: [1, 2], help="block-count choices (first d blocks kept)")
    kernels: list[int] = _f(default_factory=lambda: [3, 5, 7], help="depthwise kernel choices (odd)")
    expand_ratios: list[int] = _f(default_factory=lambda: [3, 4, 6], help="expand-ratio choices")
    stride: int = _f(1, choices=(1, 2), help="stride of the stage's first block")
    se: bool = _f(False, help="squeeze-excite in this stage's blocks")
    act: str = _f("relu", choices=("relu", "hswish"), help="activation of this stage's blocks")


@dataclass
class SpaceConfig:
    input_size: int = _f(32, lo=8, hi=512, help="input resolution (square)")
    in_channels: int = _f(3, lo=1, hi=4, help="image channels (3 for RGB, 1 for MNIST)")
    num_classes: int = _f(10, lo=2, help="number of classes")
    stem_channels: int = _f(16, lo=4, help="stem conv output channels")
    stem_stride: int = _f(2, choices=(1, 2), help="stem conv stride")
    stages: list[StageConfig] = _f(default_factory=lambda: [StageConfig()], help="elastic MBConv stages")
    final_widths: list[int] = _f(default_factory=lambda: [128, 256], help="final 1x1 expand-conv choices")
    dropout: float = _f(0.1, lo=0.0, hi=0.9, help="dropout before the final classifier (largest subnet only)")
    exit_positions: str = _f("stage", choices=("stage", "block"),
                             help="candidate exits after every stage but the last, or after every block")
    channel_divisor: int = _f(8, lo=1, hi=64,
                              help="expanded and squeeze-excite channel counts are rounded to a multiple of this")
    se_reduction: int = _f(4, lo=1, hi=64, help="squeeze-excite bottleneck = expanded channels / this")


@dataclass
class ExitsConfig:
    head: str = _f("light", choices=("light", "nachos"), help="exit-head design")
    head_width: int = _f(64, lo=8, help="hidden width of the light head")
    head_max_map: int = _f(8, lo=1, help="light head: a map larger than this is strided by 2 before the pointwise "
                           "conv (its main cost); 4 makes heads on 8x8 maps ~4x cheaper")
    criterion: str = _f("softmax", choices=("softmax", "entropy", "learned"),
                        help="exit confidence: max softmax, 1 - normalised entropy, or NACHOS's learned output")
    w_ce: float = _f(1.0, lo=0.0,
                     help="weight of the exits' cross-entropy (exit losses are averaged over a subnet's exits)")
    w_distill: float = _f(1.0, lo=0.0, help="weight of distillation from the final classifier")
    backbone_grad: float = _f(1.0, lo=0.0, hi=1.0, help="share of the exits' loss gradient that reaches the shared "
                              "backbone in supernet and finetune training; the heads always get all of it (1 = "
                              "plain joint training; 0 = heads learn on the backbone's features without shaping "
                              "them; a fine-tune with another value is named <id>-..-g<share>)")
    w_cls: float = _f(1.0, lo=0.0, help="learned criterion: weight of the confidence-weighted CE (NACHOS's L_cls)")
    w_bce: float = _f(1.0, lo=0.0, help="learned criterion: weight of the class-balanced BCE term")
    w_macs: float = _f(1.0, lo=0.0, help="learned criterion: weight of the MACs regulariser")
    w_support: float = _f(1.0, lo=0.0, help="learned criterion: weight of the support-set calibration term")
    max_macs: float = _f(2.7e6, lo=0.0, help="learned criterion: M_max of the MACs regulariser")
    support_fraction: float = _f(0.1, lo=0.0, hi=1.0, help="class-balanced support-set share of train")


@dataclass
class TrainConfig:
    epochs: int = _f(30, lo=0, help="training epochs")
    optimizer: str = _f("sgd", choices=("sgd", "adamw"), help="optimizer")
    lr: float = _f(0.1, lo=0.0, help="peak learning rate")
    momentum: float = _f(0.9, lo=0.0, hi=1.0, help="SGD (nesterov) momentum")
    weight_decay: float = _f(5e-5, lo=0.0, help="weight decay (not on BN and biases)")
    warmup_epochs: float = _f(1.0, lo=0.0, help="linear warm-up epochs")
    label_smoothing: float = _f(0.1, lo=0.0, hi=0.5, help="label smoothing of the final classifier's loss on the "
                                "labels (exit heads: none)")
    grad_clip: float = _f(5.0, lo=0.0, help="gradient-norm clip (0 = off)")
    n_random: int = _f(2, lo=0, hi=16, help="random subnets per sandwich step")
    random_max_macs: float = _f(0.0, lo=0.0, help="random sandwich members drawn only among subnets of at most "
                                "this many MACs, to train the region the search targets (0 = anywhere)")
    kd_temperature: float = _f(1.0, lo=0.1, help="temperature of in-place distillation")
    kd_loss: str = _f("kl", choices=("kl", "alpha"), help="in-place distillation divergence")
    member_label_weight: float = _f(0.0, lo=0.0, hi=1.0, help="sandwich members other than the largest: weight of "
                                    "the labels' cross-entropy in their final classifier's loss, the rest in-place "
                                    "distillation from the largest (0 = distillation only, as BigNAS; 1 = labels only)")
    kernel_transform: bool = _f(False, help="supernet: a smaller depthwise kernel is the centre of the larger one "
                                "through a learned matrix per layer and size (OFA's elastic kernel), not the raw "
                                "centre; exports hold the transformed kernels")
    bn_calib_batches: int = _f(20, lo=1, help="batches for BN recalibration before validation")
    amp: bool = _f(True, help="bf16 autocast on GPU (ignored on CPU, where it is slower: python -m bench "
                                "cpu_precision)")
    channels_last: bool = _f(True, help="channels_last memory format on CPU (~1.6x with oneDNN); GPUs stay "
                                        "contiguous (see nachos.runtime.memory_format)")
    compile: bool = _f(False, help="torch.compile the supernet")
    log_every: int = _f(20, lo=1, help="steps between step-metric logs")
    resume: bool = _f(False, help="continue from the run folder's last.pt (same as --resume)")


# TrainConfig keys that shape only the supernet and came after fine-tunes and static baselines had fingerprints:
# those fingerprints leave them out, so that adding a key kept every finished run valid
SUPERNET_ONLY_TRAIN_KEYS = ("member_label_weight", "kernel_transform")


@dataclass
class SearchConfig:
    algorithm: str = _f("nsga2", choices=("nsga2", "random"), help="search algorithm")
    random_baseline: bool = _f(False, help="also run random search with the same evaluation budget")
    population: int = _f(40, lo=4, help="NSGA-II population")
    generations: int = _f(20, lo=1, help="NSGA-II generations")
    metric: str = _f("macs", choices=("macs", "latency"), help="hardware objective")
    min_accuracy: float = _f(0.65, lo=0.0, hi=1.0, help="constraint: validation accuracy >= this")
    max_expected_macs: float = _f(2.7e6, lo=0.0, help="constraint: expected MACs <= this (0 = none)")
    max_peak_macs: float = _f(0.0, lo=0.0, help="constraint: peak MACs <= this (0 = none)")
    max_params: float = _f(0.0, lo=0.0, help="constraint: parameters <= this (0 = none)")
    threshold_min: float = _f(0.5, lo=0.0, hi=1.0, help="lowest exit threshold")
    threshold_max: float = _f(1.0, lo=0.0, hi=1.0, help="highest exit threshold (1 = never exit)")
    threshold_steps: int = _f(11, lo=2, hi=1001, help="threshold grid size")
    refine_thresholds: bool = _f(True, help="refine thresholds per (backbone, exit set) from the cache")
    bn_calib_batches: int = _f(10, lo=1, help="batches for BN recalibration of each backbone")
    max_backbones: int = _f(0, lo=0, help="distinct backbones scored at most (each costs a BN recalibration and "
                               "a validation pass); later offspring move to the nearest scored one (0 = no limit)")
    init_backbones: int = _f(8, lo=1, help="distinct backbones in the initial population (the rest vary exits; at most "
                             "search.max_backbones when that is set)")
    arch_mutation_prob: float = _f(0.3, lo=0.0, hi=1.0, help="chance that a mutation changes one arch gene")
    arch_crossover_prob: float = _f(0.5, lo=0.0, hi=1.0, help="chance that a crossover also mixes the parents' archs")
    init_max_macs_ratio: float = _f(3.0, lo=0.0, help="initial backbones: whole-network MACs at most this multiple "
                                     "of max_expected_macs (0 = any size)")
    checkpoint: str = _f("", help="supernet checkpoint to search (empty = <run_dir>/best.pt, else last.pt)")
    seed: int = _f(-1, lo=-1, help="the search's own random seed (-1 = the run's seed); the run's seed still draws "
                   "the validation split, so several searches of one supernet (search.checkpoint=..., each under "
                   "its own name=...) keep scoring on images it did not train on")


@dataclass
class ExportConfig:
    select: str = _f("best", help="'best', 'all', an index (of the search's front as pareto.csv lists it; "
                     "finetune: that solution's export), 'acc>=0.8' or 'macs<=2.7e6'; export only: 'hand' (the "
                     "space's hand-designed network with the exits and thresholds of max_accuracy_drop)")
    max_accuracy_drop: float = _f(0.005, lo=0.0, hi=1.0, help="exits chosen for a fixed backbone (export.select=hand, "
                                  "eval's operating point): the cheapest exits and thresholds whose validation "
                                  "accuracy is at most this below the network's own final classifier")
    drop_confidence: float = _f(1.645, lo=0.0, hi=10.0, help="eval's operating point: max_accuracy_drop must hold for "
                                "the validation difference minus this many standard errors (paired, so noise does "
                                "not pick the point; 1.645 = one-sided 95%, 0 = the mean alone)")
    hand_exits: list[int] = _f(default_factory=list, help="export.select=hand: these exit positions exactly, their "
                               "thresholds still chosen by max_accuracy_drop (empty = the cheapest subset of all); the "
                               "export is named hand-exits-<p1>-<p2>..")
    hand_arch: str = _f("", help="export.select=hand: this network, written as reports print it ('w16[k3e1] "
                        "w24[k3e3,k3e3] ... f128'), instead of the space's hand-designed one: say, a backbone larger "
                        "than the expected-MAC budget whose exits bring it under; the export is named "
                        "arch-<6 hex of its key>-exits-<p1>-..")
    onnx: bool = _f(True, help="also write ONNX segment graphs")
    torchscript: bool = _f(True, help="also write a TorchScript early-exit model")
    onnx_opset: int = _f(17, lo=13, hi=21, help="ONNX opset of the segment and head graphs")
    bn_calib_batches: int = _f(0, lo=0, help="un-augmented training batches (fixed seed) that recalibrate each "
                               "exported subnet's BN statistics; 0 = search.bn_calib_batches, which reproduces "
                               "the search's figures")
    test_subset: int = _f(0, lo=0, help="eval: a seeded class-balanced subset of N test images "
                          "(0 = the whole test split)")
    latency_images: int = _f(300, lo=0, help="eval: test images timed one by one (batch 1) for latency "
                             "(0 = skip)")
    latency_warmup: int = _f(20, lo=0, help="eval: untimed batch-1 calls before the latency measurement")
    ece_bins: int = _f(15, lo=2, hi=100, help="eval: equal-width confidence bins of the expected calibration error")
    baselines: str = _f("front", choices=("front", "backbones", "hand", "scored", "matched", "archs"),
                        help="baseline: static networks trained from scratch without exits: the admissible front's "
                        "backbones, the hand-designed MBConv network of the space, both (front), backbones the "
                        "search scored, spread over their MACs (scored: for the inherited-vs-scratch rank "
                        "correlation), per front solution the scored backbone most accurate alone within its "
                        "expected MACs (matched: the EENs' static rivals), or the networks "
                        "export.baseline_archs names (archs)")
    baseline_archs: list[str] = _f(default_factory=list, help="baseline: with export.baselines=archs, these networks, "
                                   "written as reports print them ('w16[k3e1] w24[k3e2,k3e2] ... f128'): say, "
                                   "rivals at an early-exit network's expected MACs")
    max_baselines: int = _f(4, lo=1, help="baseline: front / scored / matched backbones trained at most "
                            "(spread over MACs)")
    baseline_epochs: int = _f(0, lo=0, help="baseline: training epochs (0 = as long as the run's evaluated EENs "
                         "trained: train.epochs plus any fine-tuning from the supernet's weights, or a "
                         "retrained EEN's own)")
    finetune_epochs: int = _f(10, lo=1, help="finetune: epochs of training an export further from its inherited "
                              "weights (backbone and exits), before its thresholds are re-chosen on validation")
    finetune_lr: float = _f(0.01, lo=1e-9, help="finetune: peak learning rate (cosine to 1e-3 of it, no warm-up)")
    finetune_init: str = _f("inherited", choices=("inherited", "scratch", "static"),
                            help="finetune: start from the export's inherited weights, or from fresh random ones "
                            "with the static baselines' recipe (train.lr, train.warmup_epochs; finetune_lr unused): "
                            "the searched network retrained, exits included; or (static) train only fresh exit "
                            "heads, same recipe, on the frozen backbone of the run's static baseline of that arch "
                            "(`nachos baseline`), whose accuracy the final classifier then keeps")
    finetune_exit_weight: float = _f(1.0, lo=0.0, help="finetune: weight of the exits' mean loss against the final "
                                     "classifier's (scales exits.w_ce and exits.w_distill, and the learned criterion's "
                                     "w_cls, w_bce, w_macs, w_support; 1 = the supernet's member "
                                     "loss; 0 = a no-exit control: the backbone trained on, the final classifier "
                                     "alone, which the report counts as a static network trained as long); other "
                                     "values name the export <id>-<kind><epochs>-w<weight>")
    finetune_teacher: str = _f("none", choices=("none", "static"),
                               help="finetune: what the final classifier learns from: the labels (none), or the "
                               "logits of the run's static baseline of the same arch (static: distillation with "
                               "train.kd_temperature / train.kd_loss, the teacher frozen), meant to hold a backbone "
                               "trained jointly with its exits near the static network's accuracy; names the "
                               "export <id>-..-kd")
    report_runs: list[str] = _f(default_factory=list, help="report: more run names under out_dir to report "
                                "next to the config's run (e.g. [mnist]); with two or more: a side-by-side table, "
                                "repeats across seeds, and each supernet's inherited ranking of the backbones also "
                                "trained from scratch")
    report_dir: str = _f("docs", help="report: folder of RESULTS.md and its results_<name>.png plots")
    archive_dir: str = _f("docs/runs", help="archive: folder (kept in git) that `nachos archive` copies each reported "
                          "run's report inputs to, so `nachos report --config <it>/<name>/config.yaml out_dir=<it>` "
                          "regenerates the report without the run folders")


@dataclass
class WandbConfig:
    mode: str = _f("auto", choices=("auto", "online", "offline", "disabled"),
                   help="auto = online when WANDB_API_KEY is set, else offline")
    project: str = _f("nachos", help="W&B project")
    entity: str = _f("", help="W&B entity (empty = default)")


@dataclass
class Config:
    name: str = _f("default", help="run name: outputs go to <out_dir>/<name>/")
    out_dir: str = _f("runs", help="folder of run folders")
    seed: int = _f(0, lo=0, help="one seed drives everything")
    device: str = _f("auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    deterministic: bool = _f(False, help="deterministic algorithms (slower; for tests)")
    num_threads: int = _f(0, lo=0, help="torch CPU threads (0 = torch's default)")
    data: DataConfig = _f(default_factory=DataConfig)
    space: SpaceConfig = _f(default_factory=SpaceConfig)
    exits: ExitsConfig = _f(default_factory=ExitsConfig)
    train: TrainConfig = _f(default_factory=TrainConfig)
    search: SearchConfig = _f(default_factory=SearchConfig)
    export: ExportConfig = _f(default_factory=ExportConfig)
    wandb: WandbConfig = _f(default_factory=WandbConfig)
    profiles: dict[str, dict[str, Any]] = _f(
        default_factory=dict, help="per-device overrides, e.g. {cpu: {train.epochs: 5}, cuda: {...}}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# ----------------------------------------------------------------------------- building
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn ``value`` into ``tp`` (a dataclass, list, dict or scalar type) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in configs")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 2.7e6 (no dot in the mantissa) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every range check, as it compares false
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `export.select=3` arrives as a YAML number
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _check_range(value: Any, meta: dict, key: str) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if lo is not None and v < lo:
            upper = f" and <= {hi}" if hi is not None else ""
            raise ConfigError(f"{key}={value!r} is out of range; allowed: >= {lo}{upper}")
        if hi is not None and v > hi:
            lower = f" and >= {lo}" if lo is not None else ""
            raise ConfigError(f"{key}={value!r} is out of range; allowed: <= {hi}{lower}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(f"unknown key {', '.join(repr((prefix + '.' if prefix else '') + k) for k in unknown)} "
                          f"in {where}; allowed keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        coerced = _coerce(value, hints[name], key)
        _check_range(coerced, fields[name].metadata, key)
        kwargs[name] = coerced
    obj = cls(**kwargs)
    # Defaults are checked too, so that an edited default cannot slip out of range.
    for name, f in fields.items():
        if name not in kwargs:
            _check_range(getattr(obj, name), f.metadata, f"{prefix}.{name}" if prefix else name)
    return obj


def _parse_value(text: str) -> Any:
    """Parse an override's right-hand side with YAML rules (numbers, bools, lists)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse value {text!r}: {err}") from None


def get_dotted(tree: Any, dotted: str) -> Any:
    """The value at ``dotted`` (``space.stages.0.widths``) in a config dict, None where it is missing."""
    node = tree
    for part in dotted.split("."):
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return node


def saved_differences(saved: Any, cfg: Config, keys: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """(key, the saved config's value, ``cfg``'s) for each dotted key on which a checkpoint's saved
    config dict differs from ``cfg``; nothing for a checkpoint that saved none, and a key the saved
    config lacks (written by older code) is not compared."""
    if not isinstance(saved, dict):
        return []
    current = config_to_dict(cfg)
    pairs = [(key, get_dotted(saved, key), get_dotted(current, key)) for key in keys]
    return [(key, theirs, ours) for key, theirs, ours in pairs if theirs is not None and theirs != ours]


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"bad override key {dotted!r}; write it as key.sub=value")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"bad override key {dotted!r}: {'.'.join(parts[:i])} holds a single value, "
                              "not keys or items")
        if isinstance(node, list):  # list items are addressed by index: space.stages.0.widths
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"bad override key {dotted!r}: {part!r} is not an index below {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), (dict, list)):
                whole = ".".join(parts[: i + 1])
                # a list the file does not spell out: its items are not here to change
                if part not in node and parts[i + 1].isdigit() and typing.get_origin(_field_type(whole)) is list:
                    raise ConfigError(f"bad override key {dotted!r}: the config file does not give {whole}, so "
                                      f"there is no item {parts[i + 1]} to change; give the whole list ({whole}=[...]) "
                                      "or write it in the file")
                node[part] = {}
            node = node[part]


def _field_type(dotted: str) -> Any:
    """The declared type of the Config field at ``dotted`` (``space.stages.0.act`` -> str), None where none is."""
    tp: Any = Config
    for part in dotted.split("."):
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is list and part.isdigit():
            (tp,) = typing.get_args(tp)
        else:
            return None
    return tp


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "name=x"]`` -> ``{"train.epochs": 3, "name": "x"}``."""
    out = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"override {arg!r} has no '='; write overrides as key.sub=value")
        key, _, text = arg.partition("=")
        key, text = key.strip(), text.strip()
        # A string field keeps the text as written: YAML would read name=010 as 8 and name=1.10 as 1.1.
        # Quoted text is still unquoted, as in export.hand_arch='w16[k3e1] ...'.
        if _field_type(key) is str and not text.startswith(("'", '"')):
            out[key] = text
        else:
            out[key] = _parse_value(text)
    return out


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


PROFILE_NAMES = ("cpu", "cuda")


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _with_profile(file_tree: dict, name: Any, block: Any) -> dict:
    """A copy of the file's tree with ``profiles.<name>`` applied, validated, its errors blamed on the profile."""
    if name not in PROFILE_NAMES:
        raise ConfigError(f"profiles.{name}: no such device profile; allowed names: {', '.join(PROFILE_NAMES)}")
    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"profiles.{name} must be a mapping of key.sub: value, got {block!r}")
    tree = copy.deepcopy(file_tree)
    try:
        # Nested values set their leaves only: {train: {epochs: 2}} must not reset the rest of train to defaults.
        for key, value in _flatten(block or {}).items():
            _set_dotted(tree, key, value)
        _build(Config, tree)
    except ConfigError as err:
        raise ConfigError(f"profiles.{name}: {err}") from None
    return tree


def _check_beyond_ranges(cfg: Config) -> None:
    """Rules that the per-key ranges cannot state: an exclusive bound, an order between two keys."""
    if cfg.data.val_fraction <= 0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction!r} is out of range; allowed: > 0 and <= 0.5 "
                          "(the search scores subnets on the validation split, so it needs a share > 0)")
    s = cfg.search
    if s.threshold_min >= s.threshold_max:
        raise ConfigError(f"search.threshold_min={s.threshold_min!r} is not below search.threshold_max="
                          f"{s.threshold_max!r}; give threshold_min < threshold_max")


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                device_type: str | None = None) -> Config:
    """Load ``path`` (YAML), apply the ``profiles.<device_type>`` block, then ``overrides``.

    ``device_type`` is 'cpu' or 'cuda'; None resolves it from the config's own ``device`` field.
    """
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pick one of configs/*.yaml")
        with open(path) as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        tree = loaded
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = overrides or {}
    _build(Config, tree)  # validate the file alone first, so its errors are not blamed on overrides
    # The profile applies to the file as written, not after the overrides: its keys may point into a
    # list that an override replaced (space.stages=[...]).
    file_tree = copy.deepcopy(tree)
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    pre = _build(Config, tree)  # the device can itself be overridden, and it decides which profile applies
    # Every profile is checked, so that a typo in the cuda one fails on a CPU machine too.
    profiled = {name: _with_profile(file_tree, name, block) for name, block in pre.profiles.items()}
    if device_type is None:
        from nachos.runtime import resolve_device  # local: runtime imports torch
        device_type = resolve_device(pre.device).type
    merged = profiled.get(device_type, file_tree)
    for key, value in overrides.items():  # the command line wins over the profile
        _set_dotted(merged, key, value)
    cfg = _build(Config, merged)
    _check_beyond_ranges(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from nachos.runtime import atomic_write_text
    # The config is resolved already: a profile kept in the file would be applied again when it is
    # loaded (report, resume) and undo values that came from the command line.
    resolved = dataclasses.replace(cfg, profiles={})
    atomic_write_text(path, yaml.safe_dump(config_to_dict(resolved), sort_keys=False))


def saved_config_here(stored: dict[str, Any], cfg: Config) -> Config:
    """A run's saved settings (``stored``: its config.yaml or an export's recorded config) on this
    machine: ``cfg``'s device, threads, determinism, export and wandb settings and data location
    (``data.root`` when set; ``data.cache_dir`` unless only the saved one exists). ``stored`` is
    resolved, so profiles it still carries (saved before ``save_config`` emptied them) are dropped."""
    saved = load_config(None, {k: v for k, v in stored.items() if k != "profiles"}, device_type="cpu")
    data = saved.data
    if cfg.data.root:
        data = dataclasses.replace(data, root=cfg.data.root)
    if Path(cfg.data.cache_dir).is_dir() or not Path(data.cache_dir).is_dir():
        data = dataclasses.replace(data, cache_dir=cfg.data.cache_dir)
    return dataclasses.replace(saved, data=data, device=cfg.device, num_threads=cfg.num_threads,
                               deterministic=cfg.deterministic, export=cfg.export, wandb=cfg.wandb)


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for the README's config reference."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = f.metadata.get("choices")
        text = f.metadata.get("help", "")
        if allowed:
            text += f" ({' / '.join(map(str, allowed))})"
        rows.append((key, repr(default), text))
    return rows


def reference_markdown() -> str:
    """The README's configuration table: ``python -m nachos.config``."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, text in describe():
        if len(default) > 40:
            default = default[:37] + "..."
        lines.append(f"| `{key}` | `{default}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
