"""The value checks of every statistic: which matrices count, and which values are refused.

`imatui stats`, the diff and the convergence series read the same numbers, and refuse the same
files with the same words:

- a matrix (an expert) whose count is 0 was never reached by a token: llama-imatrix skips it, and
  so does every statistic here (its values, zeros or not, are not importances);
- NaN or Inf anywhere in a tensor, the skipped rows included (a quantizer would read them);
- a negative value among the means sums2 / counts (they are sums of squares);
- values so large that llama's float32 sums overflow to Inf (no real imatrix has them).

The order of the checks is the order of the messages: a tensor with NaN *and* negative values is
reported for its NaN.
"""

from __future__ import annotations

import math

import numpy as np


def live_matrices(counts: np.ndarray) -> np.ndarray:
    """The matrices (experts) that llama-imatrix reads: those whose count is > 0."""
    return np.asarray(counts) > 0


def may_have_nonfinite(values: np.ndarray) -> bool:
    """Whether `values` (float32) may hold NaN or Inf: their float64 sum cannot overflow, so it is
    non-finite only if some value is (one cheap sweep; count them with count_nonfinite)."""
    return not math.isfinite(float(np.sum(values, dtype=np.float64)))


def count_nonfinite(values: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(values)))


def nonfinite_message(name: str, bad: int) -> str:
    return f"tensor {name} has {bad} non-finite values (NaN or Inf)"


def negative_message(name: str, vmin: float) -> str:
    return f"tensor {name} has negative sums of squares (min {float(vmin):g})"


def overflow_message(name: str, vmax: float) -> str:
    return (f"tensor {name} has values too large for float32 statistics "
            f"(max {float(vmax):g}: their sums overflow to Inf)")


def nonfinite_activations_message(name: str) -> str:
    return f"tensor {name} has non-finite activation sums (NaN or Inf)"


def value_error(name: str, nonfinite: int, vmin: float, vmax: float, *sums: float) -> str | None:
    """The first thing wrong with a tensor's values, or None.

    `nonfinite`: its NaN and Inf (all rows); vmin, vmax: the smallest and largest mean over the live
    matrices; `sums`: llama's float32 sums over them (Σv, Σv²), which must be finite.
    """
    if nonfinite:
        return nonfinite_message(name, nonfinite)
    if vmin < 0:
        return negative_message(name, vmin)
    if not all(np.isfinite(s) for s in sums):
        return overflow_message(name, vmax)
    return None
