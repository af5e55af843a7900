"""``nachos space``: what a config's search space contains and what its extremes cost (and, with
``--arch 'w16[k3e1] ... f128'``, what given networks of it cost: say, to pick static rivals).

MACs follow ``supernet.costs``'s convention (ptflops, ``aten`` backend, batch 1; BN, activations,
pooling and the SE gate multiply count zero); on this project's networks it is exact (checked by
hand for the smallest CIFAR-10 subnet: 945,042).
"""
from __future__ import annotations

import argparse
import dataclasses

from exits.heads import HEAD_KINDS
from nachos.config import Config
from nachos.runtime import RunError
from supernet.costs import count_macs, count_params, segment_macs
from supernet.network import create_supernet
from supernet.space import Arch, SearchSpace


def _m(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f} M"


def _k(n: float | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def space_command(cfg: Config, args: argparse.Namespace | None = None) -> int:
    space = SearchSpace.from_config(cfg.space)
    given = []  # checked before anything is built or printed, so a typo fails at once
    for text in getattr(args, "arch", None) or []:
        try:
            given.append(space.parse_arch(text))
        except ValueError as err:
            raise RunError(f"--arch: {err}") from None
    net = create_supernet(cfg)
    c = cfg.space
    print(f"space {space.space_hash()}: {len(space.stages)} stages, "
          f"input {c.in_channels}x{c.input_size}x{c.input_size}, "
          f"{c.num_classes} classes, exits after every {c.exit_positions}")
    n = space.num_subnets()
    print(f"distinct subnets: {n:.3e} ({n:,})\n")

    stage_rows = [["stage", "in size", "stride", "widths", "depths", "kernels", "expand", "se", "act"]]
    for st in space.stages:
        stage_rows.append([str(st.index), f"{st.in_size}x{st.in_size}", str(st.stride), str(list(st.widths)),
                           str(list(st.depths)), str(list(st.kernels)), str(list(st.expand_ratios)),
                           "yes" if st.se else "no", st.act])
    print(_table(stage_rows) + f"\nfinal widths {list(space.final_widths)}\n")

    extremes: dict[str, tuple[Arch, list[int], list[int]]] = {}
    rows = [["subnet", "MACs", "params", "arch"]]
    for name, arch in (("smallest", space.smallest()), ("largest", space.largest()),
                       *((f"--arch {i + 1}", a) for i, a in enumerate(given))):
        plain = net.extract(arch, [])
        macs = count_macs(plain, plain.segment_input_shapes[0])
        rows.append([name, _m(macs), _k(count_params(plain)), str(arch)])
        if name in ("smallest", "largest"):
            extremes[name] = (arch, *segment_macs(net.extract(arch, space.available_exits(arch))))
    print(_table(rows) + "\n")

    backbone_params = count_params(net) - count_params(net.heads)
    print(f"supernet parameters: {_k(count_params(net))} (backbone {_k(backbone_params)}, "
          f"{len(net.heads)} {net.head_settings.kind} exit heads {_k(count_params(net.heads))})\n")

    rows = [["exit", "where", "map", "channels", "backbone MACs to here (smallest / largest)"]
            + [f"{kind} head MACs (min / max ch)" for kind in HEAD_KINDS] + ["head params (max ch)"]]
    for p in space.exit_positions():
        to_here = []
        for name in ("smallest", "largest"):
            arch, segs, _ = extremes[name]
            avail = space.available_exits(arch)
            to_here.append(sum(segs[:avail.index(p.index) + 1]) if p.index in avail else None)
        head_costs = []
        for kind in HEAD_KINDS:
            costs = []
            for ch in (p.channels[0], p.channels[-1]):
                head = dataclasses.replace(net.head_settings, kind=kind).create(ch, p.resolution,
                                                                                 c.num_classes).extract(ch)
                costs.append(count_macs(head, (ch, p.resolution, p.resolution)))
            head_costs.append(f"{_k(costs[0])} / {_k(costs[1])}")
        where = f"stage {p.stage}" if p.block is None else f"stage {p.stage} block {p.block}"
        rows.append([str(p.index), where, f"{p.resolution}x{p.resolution}", str(list(p.channels)),
                     f"{_m(to_here[0])} / {_m(to_here[1])}", *head_costs, _k(count_params(net.heads[p.index]))])
    print(_table(rows))
    return 0
