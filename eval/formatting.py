"""Numbers, tables and command words as the report writes them."""
from __future__ import annotations

import json
import math
import shlex
from typing import Any

import numpy as np


def pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def mmacs(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.3f} M"


def points(x: float) -> str:
    return f"{100 * x:+.2f} points"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    s = int(round(seconds))
    if s < 120:
        return f"{seconds:.0f} s"
    h, rem = divmod(s, 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def override(key: str, value: Any) -> str:
    """``key=value`` as one shell word (compact JSON for lists, quoted when the shell needs it)."""
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict, bool)) else value
    return shlex.quote(f"{key}={text}")


def n_of(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def mean_sd(values: list[float], digits: int = 2, unit: str = "%") -> str:
    if not values:
        return "-"
    v = 100 * np.asarray(values)
    sd = f" ± {v.std(ddof=1):.{digits}f}" if len(v) >= 2 else ""
    return f"{v.mean():.{digits}f}{sd}{unit} (n={len(v)})"
