"""Pareto fronts, hypervolume and the explanation of an infeasible search.

Points are candidate records (``search.evaluate``): accuracy is maximised and the cost named by
``cost_key`` (``expected_macs`` or ``expected_latency``) minimised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.indicators.hv import HV

from search.evaluate import COST_FIELDS, COST_WORDS, Constraints

Record = dict[str, Any]


def pareto_front(records: list[Record], cost_key: str) -> list[Record]:
    """Mutually non-dominated records, sorted by cost; of identical points the first evaluated."""
    order = sorted(records, key=lambda r: (r[cost_key], -r["accuracy"], r["id"]))
    front, best = [], -math.inf
    for r in order:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


@dataclass(frozen=True)
class HvReference:
    """Reference point (worst error, worst cost) that normalises both objectives to [0, 1]."""

    error: float
    cost: float

    def to_dict(self) -> dict[str, float]:
        return {"error": self.error, "cost": self.cost}


def hypervolume(records: list[Record], ref: HvReference, cost_key: str) -> float:
    """Normalised hypervolume of the admissible records (1 = a free, perfect network)."""
    pts = np.array([[(1.0 - r["accuracy"]) / ref.error, r[cost_key] / ref.cost] for r in records if r["feasible"]])
    if len(pts) == 0:
        return 0.0
    pts = pts[np.all(pts < 1.0, axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(HV(ref_point=np.ones(2))(pts))


def _fmt_macs(v: float) -> str:
    return f"{v / 1e6:.3g}M"


def total_violation(rec: Record) -> float:
    return float(sum(max(0.0, g) for g in rec["violations"].values()))


def closest(records: list[Record], n: int = 5) -> list[Record]:
    """The records that violate the constraints least (summed relative violation), one per outcome
    (genomes differing only in thresholds that never fire score the same)."""
    out, seen = [], set()
    for r in sorted(records, key=lambda r: (total_violation(r), -r["accuracy"], r["id"])):
        outcome = (r["accuracy"], r["expected_macs"], r["peak_macs"], r["params"])
        if outcome not in seen:
            seen.add(outcome)
            out.append(r)
        if len(out) == n:
            break
    return out


def explain_infeasible(records: list[Record], cons: Constraints) -> str:
    """One sentence naming the binding constraint, with the best value reached."""
    if not records:
        return "no candidate was evaluated"
    alone = {name: [r for r in records if r["violations"].get(name, 0.0) <= 0] for name in cons.active}
    # a backbone over the cost limits is never run: its accuracy of 0 says nothing about the floor
    scored = [r for r in records if r.get("scored", True)]
    for name, ok in alone.items():
        if ok or (name == "min_accuracy" and not scored):
            continue
        if name == "min_accuracy":
            best = max(scored, key=lambda r: (r["accuracy"], -r["expected_macs"]))
            return (f"no candidate reached min_accuracy={cons.min_accuracy:g}; best was {best['accuracy']:.4g} "
                    f"at {_fmt_macs(best['expected_macs'])} MACs")
        field = COST_FIELDS[name]
        best = min(records, key=lambda r: (r[field], -r["accuracy"]))
        unit = "params" if field == "params" else "MACs"
        how = f"accuracy {best['accuracy']:.4g}" if best.get("scored", True) else "not run: over the cost limits"
        return (f"no candidate reached {name}={getattr(cons, name):.4g}; the lowest {field} was "
                f"{_fmt_macs(best[field])} {unit} ({how})")
    # each constraint alone is reachable, not all together: report the accuracy within the cost limits
    cost_ok = [r for r in records if all(r["violations"].get(n, 0.0) <= 0 for n in cons.active if n != "min_accuracy")]
    if cost_ok and cons.min_accuracy > 0:
        best = max(cost_ok, key=lambda r: (r["accuracy"], -r["expected_macs"]))
        # the least of each cost among the accurate records: those over their limit bind
        least = {n: min(r[COST_FIELDS[n]] for r in alone["min_accuracy"]) for n in cons.active if n != "min_accuracy"}
        binding = [n for n, v in least.items() if v > getattr(cons, n)]
        needs = (f"reaching it took at least {', '.join(f'{_fmt_macs(least[n])} {COST_WORDS[n]}' for n in binding)}"
                 if binding else "each cost limit alone was met by an accurate candidate, never all by one")
        return (f"no candidate satisfied {cons.describe()} together: within the cost limits the best accuracy was "
                f"{best['accuracy']:.4g} (at {_fmt_macs(best['expected_macs'])} MACs), below min_accuracy="
                f"{cons.min_accuracy:g}; {needs}")
    return f"no candidate satisfied {cons.describe()} together"
