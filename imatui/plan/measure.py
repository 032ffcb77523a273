"""The error of quantizing one weight to one type, seen through the imatrix.

    error(W, T) = Σ_j imp_j Σ_i (w_ij − ŵ_ij)²  /  Σ_j imp_j Σ_i w_ij²

with j the input channel, imp_j = sums2_j / count (the per-channel mean that llama-quantize itself
weights its rounding with) and ŵ the weights after a round trip through T. The ratio is the
noise-to-signal power of the matrix product's output on the calibration data, so tensors of any
size and scale compare. Large tensors are measured on evenly spaced rows (numerator and
denominator on the same rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from imatui.errors import ImatrixError
from imatui.imatrix import Imatrix
from imatui.plan.model import Model, ModelTensor
from imatui.plan.qtypes import GGUF_PY_QUANTIZES, real_type

# values of one tensor that the error is measured on; more rows than this are sampled evenly
SAMPLE_VALUES = 1 << 21


def importance(tensor: ModelTensor, imatrix: Imatrix | None) -> np.ndarray | None:
    """Per-channel importance as (n_mat, n_per_row) float64, or None when the imatrix has no entry
    that llama-quantize would use for this tensor (it then quantizes with uniform weights).

    An expert that never saw a token gets the mean of the live experts' importance: llama-quantize
    rounds it with uniform weights (it substitutes 1), but it will see tokens on other text, and
    its error counts as much as a live expert's does.
    """
    if imatrix is None or tensor.name not in imatrix.entries:
        return None
    entry = imatrix.entries[tensor.name]
    if entry.size != tensor.n_per_row * tensor.n_mat:
        return None
    sums2 = np.asarray(entry.sums2, dtype=np.float64)
    counts = np.asarray(entry.counts, dtype=np.float64).reshape(-1)
    live = counts > 0
    if not live.any():
        return None
    values = np.empty_like(sums2)
    values[live] = sums2[live] / counts[live][:, None]
    if not live.all():
        values[~live] = values[live].mean(axis=0)
    # llama-quantize reads the entry flat: ne[0] values per matrix (expert, or MLA head)
    values = values.reshape(tensor.n_mat, tensor.n_per_row)
    return np.asarray(values, dtype=np.float64)


def sample_rows(tensor: ModelTensor, max_values: int = SAMPLE_VALUES) -> np.ndarray:
    """Row indices to measure on: all rows, or evenly spaced ones (every expert gets its share)."""
    n = tensor.n_rows
    want = max(1, max_values // max(1, tensor.n_per_row))
    if want >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, want).round().astype(np.int64))


def weighted_error(w: np.ndarray, w_hat: np.ndarray, imp_rows: np.ndarray | None) -> float:
    """Σ imp (w − ŵ)² / Σ imp w² over the rows given (imp_rows: one importance row per weight row,
    or None for uniform)."""
    w = w.astype(np.float64)
    d2 = (w - w_hat.astype(np.float64)) ** 2
    w2 = w * w
    if imp_rows is not None:
        d2 *= imp_rows
        w2 *= imp_rows
    den = float(w2.sum())
    return float(d2.sum()) / den if den > 0 else 0.0


@dataclass
class TensorSample:
    """The rows of one weight that its errors are measured on, with their importance."""

    name: str
    index: np.ndarray
    w: np.ndarray  # float32 (len(index), n_per_row)
    imp_rows: np.ndarray | None  # float64, same shape, or None (no imatrix entry)
    has_imatrix: bool


def take_sample(tensor: ModelTensor, imatrix: Imatrix | None, max_values: int = SAMPLE_VALUES) -> TensorSample:
    index = sample_rows(tensor, max_values)
    w = tensor.rows(index)
    imp = importance(tensor, imatrix)
    imp_rows = None
    if imp is not None:
        rows_per_mat = tensor.n_rows // tensor.n_mat
        imp_rows = imp[index // rows_per_mat]
    return TensorSample(tensor.name, index, w, imp_rows, imp is not None)


def error_of_rows(sample: TensorSample, w_hat: np.ndarray) -> float:
    return weighted_error(sample.w, w_hat, sample.imp_rows)


def error_f16(sample: TensorSample) -> float:
    """F16 is a plain rounding, done here exactly as ggml does it (round to nearest even)."""
    return error_of_rows(sample, sample.w.astype(np.float16).astype(np.float32))


def error_from_probe(sample: TensorSample, probe_tensor: ModelTensor) -> tuple[str, float]:
    """(type the probe really holds, error) for one weight of a probe file."""
    if probe_tensor.type in ("F32",):
        return probe_tensor.type, error_of_rows(sample, probe_tensor.rows(sample.index))
    raw = np.ascontiguousarray(probe_tensor.raw_rows()[sample.index]).view(np.uint8)
    qtype = GGMLQuantizationType[probe_tensor.type]
    try:
        w_hat = dequantize(raw, qtype).reshape(len(sample.index), -1)
    except NotImplementedError:
        raise ImatrixError(f"{probe_tensor.name}: gguf-py cannot dequantize {probe_tensor.type}; leave that "
                           "type out of --types") from None
    return probe_tensor.type, error_of_rows(sample, w_hat)


def error_estimate(sample: TensorSample, tensor: ModelTensor, type_name: str) -> tuple[str, float] | None:
    """(type, error) from gguf-py's reference quantizer, or None where gguf-py has none.

    These quantizers ignore the imatrix (llama-quantize uses it to choose scales), so the error is
    somewhat higher than what llama-quantize will reach: an upper bound, measured on the real
    weights.
    """
    real = real_type(type_name, tensor.n_per_row)
    if real == "F16":
        return real, error_f16(sample)
    if real not in GGUF_PY_QUANTIZES:
        return None
    qtype = GGMLQuantizationType[real]
    w_hat = dequantize(quantize(sample.w, qtype), qtype).reshape(sample.w.shape)
    return real, error_of_rows(sample, w_hat)


def quantizable_weights(model: Model) -> list[ModelTensor]:
    return [t for t in model.tensors.values() if t.quantizable]
