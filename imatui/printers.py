"""Text, JSON and CSV renderings of a StatsReport for the CLI (and for scripts).

The table reproduces llama-imatrix --show-statistics column for column, digit for digit, so that
people can diff our output against theirs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable

from imatui import numfmt
from imatui.stats.tensor import StatsReport, TensorStats

SORT_KEYS = {
    "layer": lambda t: (-1 if t.layer is None else t.layer, t.kind),
    "name": lambda t: t.name,
    "kind": lambda t: (t.kind, -t.sum),
    "sum": lambda t: t.sum, "min": lambda t: t.min, "max": lambda t: t.max,
    "mean": lambda t: t.mean, "std": lambda t: t.std, "active": lambda t: t.active,
    "n": lambda t: t.n, "entropy": lambda t: t.entropy, "entropy_norm": lambda t: t.entropy_norm,
    "zd": lambda t: t.zd, "cossim": lambda t: math.inf if t.cossim is None else t.cossim,  # lowest first, undefined last
    "skewness": lambda t: -math.inf if t.skewness is None else t.skewness,
    "kurtosis": lambda t: -math.inf if t.kurtosis is None else t.kurtosis,
    "dead": lambda t: t.dead,
    "ecs": lambda t: -1.0 if t.act_ecs is None else t.act_ecs,
}
# numbers read better largest first; names and layers in natural order
DESCENDING = {"sum", "min", "max", "mean", "std", "active", "n", "entropy", "entropy_norm", "zd",
              "skewness", "kurtosis", "dead", "ecs"}
CSV_FIELDS = ["name", "layer", "kind", "sum", "min", "max", "mean", "std", "active", "n", "entropy",
              "entropy_norm", "zd", "cossim", "skewness", "kurtosis", "dead", "tokens", "n_mat", "n_in",
              "skipped_matrices", "experts_unused", "act_l2", "act_cossim", "act_ecs", "act_entropy",
              "act_zd", "top_channels"]


def sort_tensors(tensors: Iterable[TensorStats], column: str | None, reverse: bool = False) -> list[TensorStats]:
    tensors = list(tensors)
    if not column:
        return tensors
    if column not in SORT_KEYS:
        raise ValueError(f"unknown sort column {column!r}; one of: {', '.join(SORT_KEYS)}")
    desc = (column in DESCENDING) != reverse
    return sorted(tensors, key=SORT_KEYS[column], reverse=desc)


def _f(fmt: str, value: float | None, width: int) -> str:
    return " " * width if value is None else fmt % value


_pct = numfmt.pct  # 100 * fraction through float32, as llama.cpp rounds it


def tensor_row(t: TensorStats) -> str:
    """One line exactly as llama-imatrix prints it (tab separated)."""
    layer = "-" if t.layer is None else str(t.layer)
    return "%5s\t%-20s\t%10.2f\t%8.4f\t%11.4f\t%6.2f\t%6.2f\t%8.2f%%\t%6d\t%10.4f\t%6.2f%%\t%10.2f%%\t%s" % (
        layer, t.kind, t.sum, t.min, t.max, t.mean, t.std, _pct(t.active), t.n, t.entropy,
        _pct(t.entropy_norm), _pct(t.zd), _f("%8.4f", t.cossim, 8),
    )


def format_table(report: StatsReport, *, sort: str | None = None, reverse: bool = False,
                 layers: bool = True) -> str:
    out = io.StringIO()
    w = out.write
    tensors = sort_tensors(report.tensors, sort, reverse)
    w(f"\nComputing statistics for {report.file} ({len(tensors)} tensors)\n\n")
    w("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" % (
        " Layer", "       Tensor", "          Σ(Act²)", "  Min", "            Max", "           μ", "   σ",
        " % Active", "N", "   Entropy", "E (norm)", "ZD", "  CosSim"))
    w("=" * 169 + "\n")
    for t in tensors:
        w(tensor_row(t) + "\n")
    if layers:
        w(f"\nComputing weighted average statistics per layer ({len(report.layers)} layers)\n\n")
        w("%s\t%s\t%s\t%s\n" % ("  Layer", "     μΣ(Act²)", "      μZD", "μCosSim"))
        w("=" * 48 + "\n")
        for lay in report.layers:
            w("%5d\t%14.2f\t%10.4f%%\t%s\n" % (lay.layer, lay.sum, _pct(lay.zd), _f("%6.4f", lay.cossim, 6)))
        w("\n")
    if report.has_activations:
        w("\nActivation statistics per layer (mean activations against the previous layer)\n\n")
        w("%s\t%s\t%s\t%s\n" % ("  Layer", "          L2", "  CosSim", "       ECS"))
        w("=" * 48 + "\n")
        for lay in report.layers:
            if lay.act_l2 is None:
                continue
            w("%5d\t%12.4f\t%s\t%10.4f\n" % (lay.layer, lay.act_l2, _f("%8.4f", lay.act_cossim, 8),
                                             lay.act_ecs or 0.0))
    notes = _notes(report)
    if notes:
        w("\n" + "\n".join(notes) + "\n")
    return out.getvalue()


def _notes(report: StatsReport) -> list[str]:
    notes = []
    if report.skipped_matrices:
        notes.append(f"note: {report.skipped_matrices} matrices with a zero count were skipped "
                     "(experts never hit), as llama.cpp does")
    for s in report.skipped:
        notes.append(f"note: {s.name} skipped: {s.reason}")
    return notes


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


# the fields scripts rely on come first in every tensor object, in this order; extras follow
JSON_TENSOR_FIELDS = ["name", "layer", "kind", "sum", "min", "max", "mean", "std", "active", "n", "entropy",
                      "entropy_norm", "zd", "cossim"]


def _tensor_json(t: TensorStats) -> dict[str, Any]:
    d = t.to_dict()
    out = {k: d.pop(k) for k in JSON_TENSOR_FIELDS}
    out.update(d)
    return out


def format_json(report: StatsReport, *, sort: str | None = None, reverse: bool = False) -> str:
    data = report.to_dict()
    data["tensors"] = [_tensor_json(t) for t in sort_tensors(report.tensors, sort, reverse)]
    return json.dumps(_clean(data), indent=1, ensure_ascii=False) + "\n"


def format_csv(report: StatsReport, *, sort: str | None = None, reverse: bool = False) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for t in sort_tensors(report.tensors, sort, reverse):
        d = t.to_dict()
        row = []
        for f in CSV_FIELDS:
            v = d.get(f)
            if v is None:
                row.append("")
            elif isinstance(v, list):
                row.append(" ".join(str(x) for x in v))
            elif isinstance(v, float):
                row.append(repr(v))
            else:
                row.append(v)
        writer.writerow(row)
    return out.getvalue()


def format_layers_csv(report: StatsReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = ["layer", "sum", "zd", "cossim", "n_tensors", "elements", "act_l2", "act_cossim", "act_ecs",
              "layer_similarity"]
    writer.writerow(fields)
    for lay in report.layers:
        d = lay.to_dict()
        writer.writerow(["" if d[f] is None else d[f] for f in fields])
    return out.getvalue()
