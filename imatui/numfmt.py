"""One text form per quantity, for every view: the tables, the detail pane, the sparklines, the diff.

The precision is llama-imatrix's where it prints the quantity (Σ(Act²) two decimals, Min/Max four,
μ/σ two, percentages two), so the app reads as `--show-statistics` does. Values outside the range a
fixed form can show (a Σ of 1e-5, or of 3e12) fall back to four significant digits instead of
printing 0.00 or a 16-digit number. Missing or non-finite values read as MISSING.

Plain functions with no imports beyond numpy: the printers, the diff printers and the TUI use them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

MISSING = "-"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _fixed(decimals: int, low: float, high: float = 1e9) -> Callable[[float | None], str]:
    """`decimals` fixed decimals where |value| is in [low, high) (and for 0), else 4 significant digits."""
    def fmt(value: float | None) -> str:
        if not _finite(value):
            return MISSING
        if value == 0 or low <= abs(value) < high:
            return f"{value:.{decimals}f}"
        return f"{value:.4g}"
    return fmt


def pct(fraction: float) -> float:
    """100 * fraction, rounded through float32 as llama.cpp computes it (the last digit depends on it)."""
    return float(np.float32(100.0) * np.float32(fraction))


def percent(fraction: float | None, decimals: int = 2) -> str:
    """A fraction as a percentage, llama's way (ZD, Active, E(norm))."""
    if not _finite(fraction):
        return MISSING
    return f"{pct(fraction):.{decimals}f}%"


def count(value: float | None) -> str:
    return MISSING if not _finite(value) else str(int(value))


def signed(fmt: Callable[[float | None], str]) -> Callable[[float | None], str]:
    """The same form with its sign always shown (differences)."""
    def f(value: float | None) -> str:
        text = fmt(value)
        return text if text == MISSING or text.startswith("-") else "+" + text
    return f


# the quantities, by the names the views use
sum2 = _fixed(2, 1e-2)  # Σ(Act²), a layer's μΣ(Act²), a Σ difference
value = _fixed(4, 1e-4)  # one channel's mean squared activation: Min, Max, a top channel
moment = _fixed(2, 1e-2)  # μ and σ of the channel values
cosine = _fixed(4, 0.0, math.inf)  # CosSim, ActCos, a convergence cosine
entropy = _fixed(4, 1e-4)
skewness = _fixed(2, 1e-2)
kurtosis = _fixed(1, 1e-1)
ratio = _fixed(2, 1e-2)  # Max/μ, B/A
distance = _fixed(4, 1e-4)  # L2, JS, ECS

QUANTITIES: dict[str, Callable[[float | None], str]] = {
    "sum": sum2, "min": value, "max": value, "mean": moment, "std": moment, "cossim": cosine,
    "act_cossim": cosine, "entropy": entropy, "skewness": skewness, "kurtosis": kurtosis,
    "max_mean": ratio, "act_l2": distance, "act_ecs": distance, "js": distance,
    "active": percent, "zd": percent, "entropy_norm": percent,
    "n": count, "dead": count, "tokens": count, "experts_unused": count, "n_tensors": count,
    "elements": count, "layer_similarity": cosine,
}


def fmt(quantity: str, value: float | None) -> str:
    """`value` in the one text form of `quantity` (a TensorStats / LayerStats field name)."""
    return QUANTITIES[quantity](value)


def tick(value: float) -> str:
    """A round axis label: 0.001, 0.01, 0.1, 1, 10, 100, 1000, then 1e4... (no 2.6e2, no 1.0e+03)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else MISSING
    if 1e-3 <= abs(value) < 1e4:
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return text
    exponent = math.floor(math.log10(abs(value)) + 1e-9)
    mantissa = value / 10 ** exponent
    return f"{mantissa:.0f}e{exponent}" if abs(mantissa - round(mantissa)) < 1e-6 else f"{value:.2g}"


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Powers of ten spanning [low, high] (positive), thinned to at most `most` (every 2nd, 3rd...)."""
    if not (low > 0 and high > 0 and math.isfinite(low) and math.isfinite(high)):
        return []
    lo, hi = math.floor(math.log10(low) + 1e-9), math.ceil(math.log10(high) - 1e-9)
    exps = [e for e in range(lo, hi + 1) if low * (1 - 1e-9) <= 10.0 ** e <= high * (1 + 1e-9)]
    if not exps:
        exps = [lo] if abs(math.log10(low) - lo) < abs(math.log10(high) - hi) else [hi]
    step = max(1, math.ceil(len(exps) / max(1, most)))
    return [10.0 ** e for e in exps[::step]]
