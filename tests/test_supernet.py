"""Search space, elastic supernet, extraction, BN recalibration and exit heads."""
from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from exits.heads import create_exit_head, nachos_pool_size, scale_gradient
from nachos.config import load_config
from supernet.bn import recalibrate_bn
from supernet.costs import count_macs
from supernet.modules import DynamicDepthwiseConv2d
from supernet.network import ElasticSupernet, create_supernet
from supernet.space import Arch, SearchSpace
from supernet.static import HeadSettings, StaticEENet

ROOT = Path(__file__).resolve().parents[1]


def _cfg(name: str, *overrides: str, device: str = "cpu"):
    # device="cuda": the YAML's full space (the cpu profile of cifar10.yaml narrows it)
    return load_config(ROOT / "configs" / name, list(overrides), device_type=device)


@torch.no_grad()
def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BN parameters and stats, so that every layer shapes the outputs (fresh BN is
    close to the identity and zero-gamma blocks would hide a wrong kernel or channel slice)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def _max_diff(a: list, b: list) -> float:
    assert len(a) == len(b)
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def cifar() -> ElasticSupernet:
    torch.manual_seed(0)
    net = create_supernet(_cfg("cifar10.yaml"))
    _randomize_bn(net, 0)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_block_learned() -> ElasticSupernet:
    torch.manual_seed(1)
    net = create_supernet(_cfg("tiny.yaml", "space.exit_positions=block", "exits.criterion=learned",
                               "exits.head=nachos"))
    _randomize_bn(net, 1)
    return net.eval()


# ----------------------------------------------------------------------------- space and Arch
def test_sampling_covers_every_choice() -> None:
    space = SearchSpace.from_config(_cfg("cifar10.yaml").space)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(600)]
    for a in archs:
        assert space.validate(a) is a
    for s, st in enumerate(space.stages):
        assert {a.depths[s] for a in archs} == set(st.depths)
        assert {a.widths[s] for a in archs} == set(st.widths)
        for b in range(st.max_depth):
            active = [a for a in archs if a.depths[s] > b]
            assert {a.kernels[s][b] for a in active} == set(st.kernels), (s, b)
            assert {a.expand_ratios[s][b] for a in active} == set(st.expand_ratios), (s, b)
    assert {a.final_width for a in archs} == set(space.final_widths)
    assert len(set(archs)) == len(archs)  # 1e20 subnets: a repeat would mean a broken sampler
    assert [space.sample(random.Random(5)) for _ in range(3)] == [space.sample(random.Random(5))] * 3


def test_num_subnets_matches_enumeration() -> None:
    space = SearchSpace.from_config(_cfg("tiny.yaml").space)
    seen = set()
    for depths in itertools.product(*(st.depths for st in space.stages)):
        per_stage = []
        for st, d in zip(space.stages, depths):
            blocks = list(itertools.product(itertools.product(st.kernels, st.expand_ratios), repeat=d))
            per_stage.append([(tuple(k for k, _ in bl) + (0,) * (st.max_depth - d),
                               tuple(e for _, e in bl) + (0,) * (st.max_depth - d)) for bl in blocks])
        for combo in itertools.product(*per_stage):
            for widths in itertools.product(*(st.widths for st in space.stages)):
                for fw in space.final_widths:
                    seen.add(Arch(depths, tuple(c[0] for c in combo), tuple(c[1] for c in combo), widths, fw))
    assert len(seen) == space.num_subnets() == 25600


def test_arch_json_round_trip_and_canonical_hash() -> None:
    space = SearchSpace.from_config(_cfg("cifar10.yaml").space)
    arch = space.sample(random.Random(3))
    again = Arch.from_json(arch.to_json())
    assert again == arch and hash(again) == hash(arch) and again.key() == arch.key()
    assert Arch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    # the same subnet written with different genes past the active depth is the same Arch
    d = space.largest().to_dict()  # depth 4 in stage 2
    d["depths"][2] = 1
    noisy = [7, 5, 3, 7][: len(d["kernels"][2])]
    d["kernels"][2] = [d["kernels"][2][0]] + noisy[1:]
    a1 = Arch.from_dict(d)
    d["kernels"][2] = [d["kernels"][2][0]] + [3] * (len(noisy) - 1)
    a2 = Arch.from_dict(d)
    assert a1 == a2 and hash(a1) == hash(a2) and a1.to_json() == a2.to_json()
    assert a1.kernels[2][1:] == (0,) * (len(noisy) - 1)
    assert len({a1, a2, space.largest()}) == 2
    with pytest.raises(ValueError, match="unknown fields"):
        Arch.from_dict({**arch.to_dict(), "colour": 1})


@pytest.mark.parametrize("field, stage, block, value", [
    ("kernels", 1, 0, 4),
    ("expand_ratios", 2, 1, 5),
    ("widths", 3, None, 100),
    ("depths", 0, None, 3),
])
def test_invalid_arch_is_rejected_naming_the_gene(field: str, stage: int, block: int | None, value: int) -> None:
    cfg = _cfg("cifar10.yaml")
    space = SearchSpace.from_config(cfg.space)
    allowed = ", ".join(map(str, getattr(cfg.space.stages[stage], field)))
    d = space.largest().to_dict()
    if block is None:
        d[field][stage] = value
    else:
        d[field][stage][block] = value
    where = f"stage {stage}" + ("" if block is None else f"][block {block}")
    with pytest.raises(ValueError, match=re.escape(f"Arch.{field}[{where}] = {value}") + f".*{allowed}"):
        space.validate(Arch.from_dict(d))


def test_invalid_arch_shapes_and_final_width() -> None:
    space = SearchSpace.from_config(_cfg("cifar10.yaml").space)
    d = space.smallest().to_dict()
    with pytest.raises(ValueError, match="final_width = 999.*128, 512, 768"):
        space.validate(Arch.from_dict({**d, "final_width": 999}))
    short = {**d, "kernels": [k[:1] for k in d["kernels"]]}
    with pytest.raises(ValueError, match=r"Arch\.kernels\[stage 0\] has 1 entries.*maximum depth 2"):
        space.validate(Arch.from_dict(short))
    with pytest.raises(ValueError, match="one entry per stage"):
        Arch.from_dict({**d, "widths": d["widths"][:-1]})
    net = create_supernet(_cfg("tiny.yaml"))
    with pytest.raises(ValueError, match="widths"):
        net.set_active(Arch.from_dict({**net.space.largest().to_dict(), "widths": [8, 16, 99]}))


def test_arch_parses_back_from_how_it_prints() -> None:
    space = SearchSpace.from_config(_cfg("cifar10-long.yaml").space)
    rng = random.Random(3)
    for arch in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(50)]:
        parsed = space.parse_arch(str(arch))
        assert parsed == arch and parsed.key() == arch.key()
    arch = space.parse_arch("w16[k3e1] w24[k3e2,k3e2] w32[k3e2,k3e2] w48[k5e3] w64[k3e2,k3e3,k3e2] f512")
    assert arch.depths == (1, 2, 2, 1, 3) and arch.final_width == 512
    assert arch.kernels[3] == (5, 0, 0) and arch.expand_ratios[4] == (2, 3, 2) and arch.widths[1] == 24
    k = "w16[k3e1] w24[k3e2]"  # the first two stages, for short bad examples
    for text, why in [(f"{k} w32[k3e2] w48[k3e2] w64[k3e2]", "must end in the final width"),
                      (f"{k} f128", "2 stages given; this space has 5"),
                      (f"{k} w32[k3 e2] w48[k3e2] f128", r"stage 2 'w32\[k3' is not 'w<width>"),
                      (f"{k} w32[k3x2] w48[k3e2] w64[k3e2] f128", r"stage 2 'w32\[k3x2\]' is not"),
                      (f"{k} w32[k3e2] w48[k3e2] w64[k3e2,k3e2,k3e2,k3e2] f128", "stage 4 has 4 blocks; at most 3"),
                      (f"{k} w32[k7e2] w48[k3e2] w64[k3e2] f128", r"kernels\[stage 2\]\[block 0\] = 7"),
                      ("w16[k3e1] w20[k3e2] w32[k3e2] w48[k3e2] w64[k3e2] f128", r"widths\[stage 1\] = 20")]:
        with pytest.raises(ValueError, match=why):
            space.parse_arch(text)


def test_space_hash_and_collapse_check() -> None:
    cfg = _cfg("cifar10.yaml").space
    h = SearchSpace.from_config(cfg).space_hash()
    assert h == SearchSpace.from_config(dataclasses.asdict(cfg)).space_hash()
    assert h != SearchSpace.from_config(dataclasses.replace(cfg, final_widths=[128, 512])).space_hash()
    with pytest.raises(ValueError, match="1x1"):
        SearchSpace.from_config(dataclasses.replace(cfg, input_size=8))


def test_exit_positions_stage_and_block() -> None:
    stage = SearchSpace.from_config(_cfg("cifar10.yaml").space)
    pos = stage.exit_positions()
    assert [(p.stage, p.block, p.resolution) for p in pos] == [(0, None, 16), (1, None, 8), (2, None, 8), (3, None, 4)]
    assert pos[3].channels == (48, 96, 128)
    assert stage.available_exits(stage.smallest()) == [0, 1, 2, 3]
    block = SearchSpace.from_config(_cfg("cifar10.yaml", "space.exit_positions=block", device="cuda").space)
    pos = block.exit_positions()
    assert len(pos) == sum(st.max_depth for st in block.stages[:-1]) == 13
    small = block.smallest()  # depth 1 everywhere: only each stage's first block
    assert block.available_exits(small) == [p.index for p in pos if p.block == 0]
    assert block.available_exits(block.largest()) == list(range(13))


# ----------------------------------------------------------------------------- supernet
def test_output_shapes_of_every_exit(cifar: ElasticSupernet, tiny_block_learned: ElasticSupernet) -> None:
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outs = cifar(x)
    assert len(outs) == len(cifar.space.exit_positions()) + 1
    assert all(o.shape == (3, 10) for o in outs)

    net = tiny_block_learned
    arch = Arch.from_dict({**net.space.largest().to_dict(), "depths": [1, 1, 2]})
    net.set_active(arch)
    with torch.no_grad():
        outs = net(x)
    avail = net.space.available_exits(arch)
    assert avail == [0, 1] and len(outs) == len(net.space.exit_positions()) + 1 == 4
    for i, o in enumerate(outs[:-1]):
        assert (o is None) == (i not in avail)
        if o is not None:
            assert o.shape == (3, 11)  # learned criterion: 10 classes + confidence logit
    assert outs[-1].shape == (3, 10)  # the final classifier never has the confidence logit
    with torch.no_grad():
        only = net(x, exit_ids=[1])
    assert only[0] is None and torch.equal(only[1], outs[1]) and torch.equal(only[-1], outs[-1])


def test_extraction_parity_random_archs(cifar: ElasticSupernet) -> None:
    space = cifar.space
    rng = random.Random(0)
    x = torch.randn(2, 3, 32, 32)
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(18)]
    for arch in archs:
        cifar.set_active(arch)
        rng_state = torch.get_rng_state()
        static = cifar.extract(arch, space.available_exits(arch)).eval()
        assert torch.equal(rng_state, torch.get_rng_state())  # extraction must not shift training's RNG
        with torch.no_grad():
            diff = _max_diff(cifar(x), static(x))
        assert diff <= 1e-5, (str(arch), diff)
    # a subset of exits: outputs are those exits' logits, in order, then the final one
    arch = archs[5]
    cifar.set_active(arch)
    static = cifar.extract(arch, [1, 3]).eval()
    assert len(static.segments) == 3 and static.exit_ids == [1, 3]
    with torch.no_grad():
        full, part = cifar(x), static(x)
    assert _max_diff([full[1], full[3], full[-1]], part) <= 1e-5


def test_extraction_parity_block_exits_learned_nachos_heads(tiny_block_learned: ElasticSupernet) -> None:
    net = tiny_block_learned
    rng = random.Random(1)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(10):
        arch = net.space.sample(rng)
        net.set_active(arch)
        static = net.extract(arch).eval()
        with torch.no_grad():
            outs = net(x)
        assert _max_diff([o for o in outs if o is not None], static(x)) <= 1e-5
    with pytest.raises(ValueError, match="not available"):
        net.extract(Arch.from_dict({**net.space.largest().to_dict(), "depths": [1, 1, 1]}), [2])
    with pytest.raises(ValueError, match="increasing"):
        net.extract(net.space.largest(), [1, 0])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated, still used for export
def test_static_from_config_loads_state_dict(cifar: ElasticSupernet) -> None:
    arch = cifar.space.sample(random.Random(7))
    cifar.set_active(arch)
    static = cifar.extract(arch, [0, 2]).eval()
    desc = json.loads(json.dumps(static.description()))  # survives a JSON file
    rebuilt = StaticEENet.from_description(desc).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(rebuilt(x), static(x)) > 1e-3  # fresh random weights differ...
        rebuilt.load_state_dict(static.state_dict())
        assert _max_diff(rebuilt(x), static(x)) == 0.0  # ...until the saved weights are loaded
        assert _max_diff(rebuilt(x), [cifar(x)[i] for i in (0, 2, -1)]) <= 1e-5
    scripted = torch.jit.script(static)  # deployable without Python
    with torch.no_grad():
        assert _max_diff(scripted(x), static(x)) <= 1e-6
    direct = StaticEENet.from_config(_cfg("cifar10.yaml").space, _cfg("cifar10.yaml").exits, arch.to_dict(), [0, 2])
    assert list(direct.state_dict()) == list(static.state_dict())
    assert static.segment_input_shapes == [(3, 32, 32), (arch.widths[0], 16, 16), (arch.widths[2], 8, 8)]
    assert static.head_input_shapes == static.segment_input_shapes[1:]


def test_state_dict_save_load_reproduces_outputs(tmp_path: Path) -> None:
    cfg = _cfg("tiny.yaml")
    torch.manual_seed(0)
    a = create_supernet(cfg)
    _randomize_bn(a, 3)
    torch.save(a.state_dict(), tmp_path / "supernet.pt")
    torch.manual_seed(1)
    b = create_supernet(cfg)
    arch = a.space.sample(random.Random(2))
    x = torch.randn(2, 3, 32, 32)
    for net in (a, b):
        net.eval().set_active(arch)
    with torch.no_grad():
        assert _max_diff(a(x), b(x)) > 1e-3
        b.load_state_dict(torch.load(tmp_path / "supernet.pt", weights_only=True))
        assert _max_diff(a(x), b(x)) == 0.0


def test_training_step_touches_only_the_active_subnet() -> None:
    net = create_supernet(_cfg("tiny.yaml"))
    arch = Arch.from_dict({**net.space.smallest().to_dict()})
    net.train().set_active(arch)
    sum(o.sum() for o in net(torch.randn(4, 3, 32, 32)) if o is not None).backward()
    stage1 = net.stages[1]
    assert stage1[1].dw.conv.weight.grad is None  # depth 1: the second block is unused
    assert net.stages[0][0].expand.conv.weight.grad is None  # expand ratio 1 skips the expand conv
    g = stage1[0].dw.conv.weight.grad  # 3x3 crop of the 5x5 kernel, first 32 of 96 channels
    used = stage1[0].dw.conv.weight.shape[0]
    mid = net.space.mid_channels(arch.widths[0], arch.expand_ratios[1][0])
    assert mid < used and g[:mid, :, 1:4, 1:4].abs().sum() > 0
    assert g[mid:].abs().sum() == 0 and g[:, :, 0].abs().sum() == 0
    assert all(p.grad is not None for p in net.heads.parameters())


def test_kernel_transform_chains_the_centre_crops_through_its_matrices() -> None:
    conv = DynamicDepthwiseConv2d(6, 7, transform_kernels=(3, 5, 7))
    assert conv.transform_sizes == (5, 3)
    with torch.no_grad():
        conv.transform_5.normal_()
        conv.transform_3.normal_()
    w = conv.weight[:4]
    k5 = (w[..., 1:6, 1:6].reshape(4, 25) @ conv.transform_5).reshape(4, 1, 5, 5)
    k3 = (k5[..., 1:4, 1:4].reshape(4, 9) @ conv.transform_3).reshape(4, 1, 3, 3)
    assert torch.allclose(conv.kernel(4, 5), k5) and torch.allclose(conv.kernel(4, 3), k3)
    assert torch.equal(conv.kernel(6, 7), conv.weight)
    raw = DynamicDepthwiseConv2d(6, 5)  # no transforms: the raw centre
    assert torch.equal(raw.kernel(6, 3), raw.weight[..., 1:4, 1:4])
    with pytest.raises(ValueError, match="no transform"):
        DynamicDepthwiseConv2d(6, 7, transform_kernels=(3, 7)).kernel(6, 5)


def test_kernel_transform_starts_at_the_centre_crop_trains_and_extracts_what_it_runs() -> None:
    cfg = _cfg("cifar10.yaml")
    plain, net = create_supernet(cfg), create_supernet(cfg, kernel_transform=True)
    _randomize_bn(plain, 4)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(re.search(r"dw\.conv\.transform_3$", k) for k in missing) and not unexpected
    space, x = net.space, torch.randn(2, 3, 32, 32)
    small, large = space.smallest(), space.largest()  # every kernel 3, every kernel 5
    for n in (plain, net):
        n.eval().set_active(small)
    with torch.no_grad():
        assert _max_diff(plain(x), net(x)) <= 1e-5  # identity start: a raw centre crop
        for k in missing:
            net.get_parameter(k).add_(torch.randn(9, 9) * 0.3)
        assert _max_diff(plain(x), net(x)) > 1e-4  # the transform shapes what 3x3 subnets run (logits ~0.01)...
        for n in (plain, net):
            n.set_active(large)
        assert _max_diff(plain(x), net(x)) <= 1e-5  # ...and never the largest kernel
    rng = random.Random(3)
    for arch in [small] + [space.sample(rng) for _ in range(6)]:
        net.set_active(arch)
        static = net.extract(arch).eval()
        assert not any("transform" in k for k in static.state_dict())
        with torch.no_grad():
            assert _max_diff(net(x), static(x)) <= 1e-5, str(arch)
    net.train().set_active(small)
    sum(o.sum() for o in net(x) if o is not None).backward()
    assert net.stages[0][0].dw.conv.transform_3.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_scale_gradient_keeps_values_and_scales_the_gradient(scale: float) -> None:
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = scale_gradient(x, scale)
    assert torch.allclose(y, x, rtol=0, atol=1e-6)
    ((y * w).sum() + (0 * x).sum()).backward()  # (the second term: at scale 0, y has no graph)
    assert torch.allclose(x.grad, scale * w)


def _exit_loss_grads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradients of the exits' logits alone: on the stem's conv, and on every head parameter."""
    net.zero_grad(set_to_none=True)
    sum(o.square().sum() for o in net(x)[:-1] if o is not None).backward()
    weight = net.stem.conv.weight if hasattr(net, "stem") else net.backbone_modules()[0].conv.weight
    stem = torch.zeros_like(weight) if weight.grad is None else weight.grad  # (None: nothing reached it)
    return stem.clone(), [p.grad.clone() for p in net.heads.parameters() if p.grad is not None]


def test_backbone_grad_scales_what_the_exits_send_the_backbone_and_not_the_heads() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    full = create_supernet(_cfg("tiny.yaml"))
    part = create_supernet(_cfg("tiny.yaml", "exits.backbone_grad=0.25"))
    part.load_state_dict(full.state_dict())
    for net in (full, part):
        net.train().set_active(net.space.largest())
    stem_full, heads_full = _exit_loss_grads(full, x)
    stem_part, heads_part = _exit_loss_grads(part, x)
    assert stem_full.abs().sum() > 0 and torch.allclose(stem_part, 0.25 * stem_full, rtol=1e-4, atol=1e-8)
    assert len(heads_full) == len(heads_part) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in zip(heads_full, heads_part))
    # the static network does the same when a trainer sets it, and runs unchanged
    static = full.extract()
    static.train()
    stem_before, _ = _exit_loss_grads(static, x)
    static.backbone_grad = 0.0
    stem_zero, heads_zero = _exit_loss_grads(static, x)
    assert stem_before.abs().sum() > 0 and stem_zero.abs().sum() == 0 and all(g.abs().sum() > 0 for g in heads_zero)
    static.eval()
    with torch.no_grad():
        zero_out = static(x)
        static.backbone_grad = 1.0
        assert _max_diff(zero_out, static(x)) == 0.0


# ----------------------------------------------------------------------------- BN recalibration
def test_dynamic_bn_updates_only_its_slice() -> None:
    from supernet.modules import DynamicBatchNorm2d
    dyn, ref = DynamicBatchNorm2d(8), nn.BatchNorm2d(5)
    with torch.no_grad():
        dyn.running_mean.copy_(torch.arange(8.0))
        ref.running_mean.copy_(torch.arange(5.0))
    x = torch.randn(4, 5, 3, 3) * 3 + 1
    for momentum in (0.1, None):
        dyn.momentum = ref.momentum = momentum
        assert torch.allclose(dyn.train()(x), ref.train()(x), atol=1e-6)
        assert torch.allclose(dyn.running_mean[:5], ref.running_mean, atol=1e-6)
        assert torch.allclose(dyn.running_var[:5], ref.running_var, atol=1e-6)
        assert torch.equal(dyn.running_mean[5:], torch.arange(5.0, 8.0))
        assert torch.equal(dyn.running_var[5:], torch.ones(3))
    assert torch.allclose(dyn.eval()(x), ref.eval()(x), atol=1e-6)


def test_bn_recalibration_changes_stats_deterministically_and_matches_static() -> None:
    torch.manual_seed(0)
    net = create_supernet(_cfg("tiny.yaml"))
    _randomize_bn(net, 4)
    # every stage, the last one and the final classifier narrower than their maximum, stage 1 shallower:
    # each "untouched" check below has channels to look at
    arch = Arch(depths=(1, 1, 2), kernels=((5,), (3, 3), (5, 3)), expand_ratios=((3,), (4, 4), (2, 4)),
                widths=(8, 16, 24), final_width=64)
    net.eval().set_active(arch)
    batches = [torch.randn(16, 3, 32, 32) * 2 + 0.5 for _ in range(3)]
    static_before = net.extract(arch).eval()
    state0 = {k: v.clone() for k, v in net.state_dict().items()}

    assert recalibrate_bn(net, iter(batches), num_batches=2) == 2
    state1 = {k: v.clone() for k, v in net.state_dict().items()}
    assert not net.training
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    stem_mean = "stem.bn.running_mean"
    assert not torch.allclose(state0[stem_mean], state1[stem_mean])
    # channels this subnet does not use keep their statistics
    for key, start in (("final.conv.bn.running_mean", arch.final_width),
                       ("stages.2.0.project.bn.running_var", arch.widths[-1]),
                       ("stages.1.1.dw.bn.running_mean", 0)):  # a block past stage 1's depth: all of it
        assert len(state0[key][start:]) > 0, key
        assert torch.equal(state0[key][start:], state1[key][start:]), key

    net.load_state_dict(state0)
    recalibrate_bn(net, batches, num_batches=2)
    assert all(torch.equal(v, state1[k]) for k, v in net.state_dict().items())

    # the static copy recalibrated on the same batches gets the supernet's (sliced) statistics
    recalibrate_bn(static_before, batches, num_batches=2)
    static_after = net.extract(arch).eval()
    for (k, v), (k2, w) in zip(static_before.state_dict().items(), static_after.state_dict().items()):
        assert k == k2
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(net(x), static_before(x)) <= 1e-5


# ----------------------------------------------------------------------------- costs
def _hand_macs(space: SearchSpace, arch: Arch) -> int:
    cfg = space.cfg
    total = cfg.in_channels * cfg.stem_channels * 9 * space.stem_size ** 2
    for s in space.block_specs(arch):
        if s.expand:
            total += s.in_channels * s.mid_channels * s.in_size ** 2
        total += s.mid_channels * s.kernel ** 2 * s.out_size ** 2
        if s.se_channels:
            total += 2 * s.mid_channels * s.se_channels + s.se_channels + s.mid_channels  # with biases
        total += s.mid_channels * s.out_channels * s.out_size ** 2
    total += arch.widths[-1] * arch.final_width * space.final_size ** 2
    return total + (arch.final_width + 1) * cfg.num_classes


def test_default_space_mac_range_and_exact_count(cifar: ElasticSupernet) -> None:
    space = cifar.space
    small, large = space.smallest(), space.largest()
    macs_small = count_macs(cifar.extract(small, []), (3, 32, 32))
    macs_large = count_macs(cifar.extract(large, []), (3, 32, 32))
    assert macs_small <= 1_000_000 and 20_000_000 <= macs_large <= 30_000_000, (macs_small, macs_large)  # cpu profile
    full = SearchSpace.from_config(_cfg("cifar10.yaml", device="cuda").space)
    assert _hand_macs(full, full.smallest()) == macs_small and _hand_macs(full, full.largest()) >= 40_000_000
    arch = space.sample(random.Random(11))
    for a in (small, large, arch):
        assert count_macs(cifar.extract(a, []), (3, 32, 32)) == _hand_macs(space, a)
    # segments partition the backbone's cost
    net = cifar.extract(arch, space.available_exits(arch))
    segs = [count_macs(s, shape) for s, shape in zip(net.segments, net.segment_input_shapes)]
    assert sum(segs) == _hand_macs(space, arch)


# ----------------------------------------------------------------------------- exit heads
@pytest.mark.parametrize("kind", ["light", "nachos"])
@pytest.mark.parametrize("size", [16, 8, 4, 7])
def test_exit_head_slices_and_extracts(kind: str, size: int) -> None:
    torch.manual_seed(0)
    head = create_exit_head(kind, 40, size, 10, 32, confidence_output=True).eval()
    _randomize_bn(head, 5)
    for c in (40, 24):
        x = torch.randn(2, c, size, size)
        static = head.extract(c).eval()
        with torch.no_grad():
            y = head(x)
            assert y.shape == (2, 11)
            assert (y - static(x)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="40"):
        head(torch.randn(1, 48, size, size))
    plain = create_exit_head(kind, 40, size, 10, 32, confidence_output=False)
    assert plain(torch.randn(1, 40, size, size)).shape == (1, 10)
    with pytest.raises(ValueError, match="light, nachos"):
        create_exit_head("heavy", 40, size, 10, 32, False)


def test_light_head_max_map_strides_larger_maps_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    cheap = create_exit_head("light", 32, 8, 10, 64, False, max_map=4).eval()
    full = create_exit_head("light", 32, 8, 10, 64, False).eval()
    with torch.no_grad():
        assert (cheap(x) - cheap.extract(32).eval()(x)).abs().max() <= 1e-5
    # the pointwise conv runs on 4x4 instead of 8x8: about a quarter of the MACs
    assert count_macs(cheap.extract(32), (32, 8, 8)) < 0.3 * count_macs(full.extract(32), (32, 8, 8))
    at_limit = create_exit_head("light", 32, 4, 10, 64, False, max_map=4)
    assert at_limit.stride == 1 and cheap.stride == 2 and full.stride == 1
    with pytest.raises(ValueError, match="max_map"):
        create_exit_head("light", 32, 8, 10, 64, False, max_map=0)


def test_head_settings_read_old_and_new_forms() -> None:
    # exports and checkpoints saved before max_map existed were built with the default
    assert HeadSettings.from_exits({"kind": "light", "width": 32, "confidence_output": False}) == HeadSettings(width=32)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["exits.head_max_map=4"], device_type="cpu")
    hs = HeadSettings.from_exits(cfg.exits)
    assert hs.max_map == 4
    assert HeadSettings.from_exits(hs.to_dict()) == hs == HeadSettings.from_exits(dataclasses.asdict(cfg.exits))


def test_nachos_pool_keeps_small_map() -> None:
    assert [nachos_pool_size(s) for s in (32, 16, 8, 7, 4, 2)] == [4, 4, 4, 2, 2, 1]


def test_exits_package_imports_nothing_of_ours() -> None:
    ours = {"nachos", "supernet", "search", "eval", "bench"}
    for path in (ROOT / "exits").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] in ours for n in names), (path.name, names)


# ----------------------------------------------------------------------------- other spaces
def test_mnist_space_builds_and_runs() -> None:
    cfg = _cfg("mnist.yaml")
    assert cfg.data.name == "mnist" and cfg.space.in_channels == 1 and not cfg.data.augment.hflip
    torch.manual_seed(0)
    net = create_supernet(cfg)
    _randomize_bn(net, 6)
    net.eval()
    x = torch.randn(2, 1, 28, 28)
    for arch in (net.space.smallest(), net.space.largest(), net.space.sample(random.Random(0))):
        net.set_active(arch)
        with torch.no_grad():
            outs = net(x)
            assert len(outs) == len(net.space.exit_positions()) + 1
            assert all(o.shape == (2, 10) for o in outs)
            assert _max_diff(outs, net.extract(arch).eval()(x)) <= 1e-5
