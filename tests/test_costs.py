"""Calibrated cost table and the cost model of an early-exit network (supernet.costs)."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nachos.config import load_config
from nachos.runtime import RunError
from supernet.costs import (
    CONVENTION, MacTable, TableMismatchError, _ArchCosts, count_macs, count_params, enumerate_items, heads_hash,
    macs_command, network_items, profile_exit_costs, random_exit_set,
)
from supernet.network import ElasticSupernet, create_supernet
from supernet.space import Arch, SearchSpace
from supernet.static import HeadSettings

ROOT = Path(__file__).resolve().parents[1]


def _cfg(name: str, *overrides: str):
    return load_config(ROOT / "configs" / name, list(overrides), device_type="cpu")


@pytest.fixture(scope="module")
def cifar() -> ElasticSupernet:
    torch.manual_seed(0)
    return create_supernet(_cfg("cifar10.yaml")).eval()


@pytest.fixture(scope="module")
def table(cifar: ElasticSupernet, tmp_path_factory: pytest.TempPathFactory) -> MacTable:
    """One lazily filled table of the default space, shared by the tests of this module: entries
    are measured on first use, which also exercises the lazy path and its persistence."""
    path = tmp_path_factory.mktemp("costs") / "macs.json"
    return MacTable(cifar.space, cifar.head_settings, path=path)


def test_table_sums_equal_ptflops_on_random_subnets(cifar: ElasticSupernet, table: MacTable) -> None:
    space = cifar.space
    rng = random.Random(123)
    pairs = [(space.smallest(), space.available_exits(space.smallest())), (space.largest(), [])]
    pairs += [(a := space.sample(rng), random_exit_set(space, a, rng)) for _ in range(20)]
    assert any(len(ids) >= 2 for _, ids in pairs) and any(not ids for _, ids in pairs)
    for arch, ids in pairs:
        net = cifar.extract(arch, ids).eval()
        want = profile_exit_costs(net)  # ptflops per segment and head, cumulated
        got = table.exit_costs(arch, ids)
        assert got.shape == (len(ids) + 1,)
        assert np.array_equal(got, want), (str(arch), ids, got - want)
        assert count_macs(net, net.segment_input_shapes[0]) == table.peak_cost(arch, ids)
        assert count_params(net) == table.params(arch, ids)
    # the hand count of the smallest CIFAR subnet (supernet/summary.py docstring)
    assert table.backbone_costs(space.smallest())[-1] == 945_042
    assert table.path is not None and table.path.is_file()  # lazily measured entries were persisted


def test_convention_counts_only_conv_and_linear() -> None:
    from supernet.static import ConvBnAct

    # conv 3x3 8->16 at 8x8 (no bias) + BN + hard-swish + a pooled linear 16->10 with bias
    m = torch.nn.Sequential(ConvBnAct(8, 16, 3, act="hswish"), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(1), torch.nn.Linear(16, 10))
    assert count_macs(m, (8, 8, 8)) == 8 * 16 * 9 * 64 + 16 * 10 + 10
    assert "convolutions and linear" in CONVENTION


def test_exit_costs_hand_example(cifar: ElasticSupernet) -> None:
    space = cifar.space
    arch = space.smallest()
    t = MacTable(space, cifar.head_settings)
    # given per-position costs (4 candidate positions): backbone up to each, then the whole network
    t._cache[arch] = _ArchCosts((10.0, 20.0, 30.0, 40.0, 100.0), (1.0, 2.0, 3.0, 4.0), 0, (0, 0, 0, 0))
    ids = [0, 2, 3]
    # leave at 0: 10 + 1; at 2: 30 + 1 + 3; at 3: 40 + 1 + 3 + 4; final: 100 + 1 + 3 + 4 (NACHOS's reference
    # code would count only the exit's own head, and none on the final path: 11, 33, 44, 100)
    assert t.exit_costs(arch, ids).tolist() == [11.0, 34.0, 48.0, 108.0]
    assert t.peak_cost(arch, ids) == 108.0


def test_earlier_heads_are_counted_in_later_exits(cifar: ElasticSupernet, table: MacTable) -> None:
    space = cifar.space
    rng = random.Random(5)
    for _ in range(10):
        arch = space.sample(rng)
        ids = sorted(rng.sample(space.available_exits(arch), 3))
        b, h, c = table.backbone_costs(arch), table.head_costs(arch), table.exit_costs(arch, ids)
        assert b.shape == (len(space.exit_positions()) + 1,) and h.shape == (len(space.exit_positions()),)
        assert np.all(h[ids] > 0)
        for k, i in enumerate(ids):
            assert c[k] == b[i] + h[ids[: k + 1]].sum()
            assert c[k] > b[i] + h[i] or k == 0  # more than its own head once an earlier exit exists
        assert c[-1] == b[-1] + h[ids].sum()
        # one exit alone costs less than the same exit behind earlier ones
        assert table.exit_costs(arch, [ids[-1]])[0] < c[-2]


def test_peak_bounds_expected_for_random_rates(cifar: ElasticSupernet, table: MacTable) -> None:
    space = cifar.space
    rng = random.Random(9)
    for _ in range(30):
        arch = space.sample(rng)
        ids = random_exit_set(space, arch, rng)
        costs = table.exit_costs(arch, ids)
        assert np.all(np.diff(costs) > 0)  # leaving later always costs more
        assert table.peak_cost(arch, ids) == costs[-1]


def test_bad_exit_ids_are_refused(cifar: ElasticSupernet, table: MacTable) -> None:
    arch = cifar.space.smallest()
    for ids in ([2, 1], [1, 1], [7], [-1]):
        with pytest.raises(ValueError, match="available"):
            table.exit_costs(arch, ids)
    bad = arch.to_dict()
    bad["final_width"] = 999
    with pytest.raises(ValueError, match="final_width"):
        table.exit_costs(Arch.from_dict(bad), [])


def test_block_positions_unavailable_are_nan_and_exact(tmp_path: Path) -> None:
    cfg = _cfg("tiny.yaml", "space.exit_positions=block")
    torch.manual_seed(1)
    net = create_supernet(cfg).eval()
    space = net.space
    t = MacTable.build(space, cfg.exits, path=tmp_path / "macs.json", progress=False)
    built = t.measured_now
    assert built == len(enumerate_items(space, t.heads))
    shallow = space.smallest()  # depth 1 where the tiny space allows 2: its block-1 positions are missing
    missing = [p.index for p in space.exit_positions() if not p.available(shallow)]
    assert missing
    assert np.isnan(t.backbone_costs(shallow)[missing]).all() and np.isnan(t.head_costs(shallow)[missing]).all()
    with pytest.raises(ValueError, match="available"):
        t.exit_costs(shallow, missing[:1])
    rng = random.Random(2)
    for _ in range(8):
        arch = space.sample(rng)
        ids = random_exit_set(space, arch, rng)
        e = net.extract(arch, ids).eval()
        assert np.array_equal(t.exit_costs(arch, ids), profile_exit_costs(e))
        assert t.params(arch, ids) == count_params(e)
    assert t.measured_now == built  # the build enumerated every entry these subnets use


def test_enumeration_covers_random_subnets_of_default_space(cifar: ElasticSupernet) -> None:
    space, heads = cifar.space, cifar.head_settings
    keys = set(enumerate_items(space, heads))
    rng = random.Random(4)
    for _ in range(300):
        arch = space.sample(rng)
        used = {it.key for it, _ in network_items(space, heads, arch, space.available_exits(arch))}
        assert used <= keys, used - keys


def test_json_round_trip_and_persisted_lazy_entries(cifar: ElasticSupernet, table: MacTable, tmp_path: Path) -> None:
    space = cifar.space
    arch = space.sample(random.Random(77))
    ids = space.available_exits(arch)[1:3]
    costs = table.exit_costs(arch, ids)  # may measure new entries: they are saved with the table
    path = table.save(tmp_path / "copy.json")
    data = json.loads(path.read_text())
    assert data["metric"] == "macs" and data["space_hash"] == space.space_hash()
    assert data["convention"] == CONVENTION and data["head_settings"] == cifar.head_settings.to_dict()
    assert len(data["entries"]) == len(table) and all(isinstance(v["cost"], int) for v in data["entries"].values())
    back = MacTable.load(path, space, cifar.head_settings)
    assert back.entries == table.entries
    assert np.array_equal(back.exit_costs(arch, ids), costs)
    assert back.params(arch, ids) == table.params(arch, ids)
    assert back.measured_now == 0
    again = MacTable.load_or_build(space, cifar.head_settings, path)  # exists: loaded, not rebuilt
    assert again.entries == table.entries and again.measured_now == 0


def test_incompatible_table_is_refused(table: MacTable, tmp_path: Path) -> None:
    path = table.save(tmp_path / "macs.json")
    cfg = _cfg("cifar10.yaml")
    other_space = SearchSpace.from_config(_cfg("cifar10.yaml", "space.final_widths=[128,512]").space)
    with pytest.raises(TableMismatchError) as err:
        MacTable.load_or_build(other_space, cfg.exits, path)
    msg = str(err.value)
    assert table.space_hash in msg and other_space.space_hash() in msg and "nachos macs build" in msg
    other_heads = HeadSettings.from_exits(_cfg("cifar10.yaml", "exits.head_width=32").exits)
    with pytest.raises(TableMismatchError) as err:
        MacTable.load(path, table.space, other_heads)
    msg = str(err.value)
    assert table.heads_hash in msg and "nachos macs build" in msg
    assert MacTable(table.space, other_heads).heads_hash in msg
    with pytest.raises(TableMismatchError):  # same weights' shapes, other computation
        MacTable.load(path, table.space, HeadSettings.from_exits(_cfg("cifar10.yaml", "exits.head_max_map=4").exits))
    with pytest.raises(TableMismatchError, match="latency"):
        MacTable.load(path, table.space, table.heads, metric="latency")
    path.write_text("{not json")
    with pytest.raises(RunError, match="cannot read cost table"):
        MacTable.load(path, table.space, table.heads)


def test_head_max_map_enters_the_table_id_only_away_from_its_default() -> None:
    # the id of every table measured before max_map existed: they must stay loadable
    before = json.dumps({"confidence_output": False, "kind": "light", "num_classes": 10, "width": 64},
                        separators=(",", ":"))
    assert heads_hash(HeadSettings(), 10) == hashlib.sha256(before.encode()).hexdigest()[:16]
    assert heads_hash(HeadSettings(max_map=4), 10) != heads_hash(HeadSettings(), 10)


def test_latency_table_on_tiny_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import supernet.costs as costs_module

    cfg = _cfg("tiny.yaml", "space.stages.2.depths=[1,3]")  # a stage whose blocks 1 and 2 share a configuration
    space = SearchSpace.from_config(cfg.space)
    timed, time_in_situ = [], costs_module.time_in_situ

    def recording(pairs, *args, **kwargs):
        timed.append([m for m, _ in pairs])
        return time_in_situ(pairs, *args, **kwargs)

    monkeypatch.setattr(costs_module, "time_in_situ", recording)
    t = MacTable.build(space, cfg.exits, "latency", path=tmp_path / "latency-cpu.json", progress=False)
    # a block configuration repeated within a carrier runs as separate modules, as in a real network
    assert timed and all(len({id(m) for m in chain}) == len(chain) for chain in timed)
    assert len(t) == len(enumerate_items(space, t.heads))
    assert all(0 < c < 1.0 and math.isfinite(c) for c, _ in t.entries.values())
    arch = space.largest()
    ids = space.available_exits(arch)
    costs = t.exit_costs(arch, ids)
    assert np.all(np.diff(costs) > 0) and t.meta["device"].startswith("cpu")
    back = MacTable.load(t.path, space, cfg.exits, "latency")
    assert np.array_equal(back.exit_costs(arch, ids), costs)
    # a missing entry is not timed on a device other than the table's
    other = MacTable.load(t.path, space, cfg.exits, "latency")
    other.meta["device"] = "cuda: some other device"
    del other.entries[next(k for k in other.entries if k.startswith("stem("))]
    with pytest.raises(RunError, match="rebuild it on the target device"):
        other.exit_costs(arch, ids)


def test_macs_command_builds_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg("tiny.yaml", f"out_dir={tmp_path}")
    threads = torch.get_num_threads()
    assert macs_command(cfg, argparse.Namespace(action="build", metric="macs", samples=3)) == 0
    assert (cfg.run_dir / "macs.json").is_file()
    assert macs_command(cfg, argparse.Namespace(action="verify", metric="macs", samples=4)) == 0
    out = capsys.readouterr().out
    assert "built" in out and "0 MACs over every exit prefix" in out and "OK" in out
    torch.set_num_threads(threads)


def test_space_command_counts_the_networks_given_with_arch(capsys: pytest.CaptureFixture) -> None:
    from nachos.cli import main

    cfg = _cfg("tiny.yaml")
    space = SearchSpace.from_config(cfg.space)
    table = MacTable(space, cfg.exits)
    archs = [space.sample(random.Random(s)) for s in (1, 2)]
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert main(["space", "--config", tiny, "--arch", str(archs[0]), "--arch", str(archs[1]),
                 "wandb.mode=disabled"]) == 0
    out = capsys.readouterr().out
    for i, arch in enumerate(archs, 1):
        row = next(ln for ln in out.splitlines() if ln.startswith(f"--arch {i} "))
        assert f"{table.peak_cost(arch, []) / 1e6:.3f} M" in row and row.endswith(str(arch))
    assert main(["space", "--config", tiny, "--arch", "w8[k3e1] f64", "wandb.mode=disabled"]) == 2
    captured = capsys.readouterr()
    assert "--arch: arch 'w8[k3e1] f64': 1 stages given; this space has 3" in captured.err
    assert "distinct subnets" not in captured.out  # refused before any work


def test_measuring_entries_leaves_the_torch_rng_alone() -> None:
    """A supernet run fills its table after seeding: drawing from the RNG there would make its dropout masks
    depend on whether macs.json already existed."""
    cfg = _cfg("tiny.yaml")
    space = SearchSpace(cfg.space)
    table = MacTable(space, cfg.exits)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert table.fill(list(enumerate_items(space, table.heads).values())[:4]) == 4
    assert torch.equal(torch.get_rng_state(), before)
