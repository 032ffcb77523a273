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
from imatui.stats.experts import Coverage, ExpertRow
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
                 layers: bool = True, coverage: Coverage | None = None) -> str:
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
    if coverage is not None and coverage.is_moe:
        w(format_coverage(coverage))
    return out.getvalue()


def _expert_list(experts: list[int], limit: int = 12) -> str:
    if len(experts) <= limit:
        return " ".join(str(e) for e in experts)
    return " ".join(str(e) for e in experts[:limit]) + f" +{len(experts) - limit}"


def _tokens(value: float) -> str:
    return f"{value:.1f}" if value < 1e5 else f"{value:.4g}"


def coverage_summary(cov: Coverage) -> str:
    """One sentence for the file: dead and rare experts, and the chunks the rare ones still need."""
    text = (f"{cov.dead} dead and {cov.rare} rare of {cov.n_experts} experts in {len(cov.layers)} MoE layers "
            f"(rare: {cov.threshold.label})")
    if cov.slowest is not None and cov.chunks_needed is not None:
        layer, expert = cov.slowest
        lay = cov.layer(layer)
        tokens = lay.counts[expert] if lay is not None else 0
        text += (f"; at the current routing rates the rare experts need about {cov.chunks_needed} more chunks "
                 f"(slowest: blk.{layer} expert {expert}, {tokens} token{'s' if tokens != 1 else ''} in "
                 f"{cov.chunk_count} chunks, "
                 f"to reach {_tokens(lay.threshold if lay is not None else 0.0)})")
    elif cov.rare and cov.chunk_count <= 0:
        text += "; no chunk count in the file, so no estimate of the chunks still needed"
    if cov.dead:
        text += "; dead experts were never routed a token: more of the same data will not reach them"
    return text


def format_coverage(cov: Coverage) -> str:
    """The expert coverage section of `imatui stats` (MoE files)."""
    out = io.StringIO()
    w = out.write
    w(f"\nExpert coverage per layer ({len(cov.layers)} MoE layers; rare: {cov.threshold.label})\n\n")
    w("%7s %8s %5s %5s %8s %9s %11s %10s %9s  %s\n" % (
        "Layer", "Experts", "Dead", "Rare", "Min", "Min live", "Mean", "Rare <", "+Chunks",
        "Dead experts | rare experts"))
    w("=" * 108 + "\n")
    for lay in cov.layers:
        detail = _expert_list(lay.dead) or "-"
        detail += " | " + (_expert_list(lay.rare) or "-")
        w("%7d %8d %5d %5d %8d %9s %11s %10s %9s  %s\n" % (
            lay.layer, lay.n_experts, len(lay.dead), len(lay.rare), lay.min_count,
            "-" if lay.min_live is None else str(lay.min_live), _tokens(lay.mean),
            _tokens(lay.threshold), "-" if lay.chunks_needed is None else str(lay.chunks_needed), detail))
        if not lay.kinds_agree:
            w("        (its gate/up/down counts differ: the smallest per expert is shown)\n")
    w("\n" + coverage_summary(cov) + "\n")
    return out.getvalue()


EXPERT_COLUMNS = ["Expert", "Tokens", "Share", "Σ(Act²)", "Min", "Max", "μ", "σ", "% Active", "Entropy",
                  "E (norm)", "ZD", "Top channels"]


def expert_cells(row: ExpertRow) -> list[str]:
    """One per-expert row as text cells (the CLI table and the app's expert table)."""
    head = [str(row.expert), str(row.tokens), f"{row.share * 100:.2f}%"]
    s = row.stats
    if s is None:
        return head + [""] * (len(EXPERT_COLUMNS) - 3)
    return head + [f"{s.sum:.2f}", f"{s.min:.4f}", f"{s.max:.4f}", f"{s.mean:.2f}", f"{s.std:.2f}",
                   f"{_pct(s.active):.2f}%", f"{s.entropy:.4f}", f"{_pct(s.entropy_norm):.2f}%",
                   f"{_pct(s.zd):.2f}%", " ".join(str(c) for c in s.top_channels[:4])]


EXPERT_CSV_FIELDS = ["expert", "tokens", "share", "status", "sum", "min", "max", "mean", "std", "active", "n",
                     "entropy", "entropy_norm", "zd", "skewness", "kurtosis", "dead_channels", "top_channels"]


def format_expert_csv(rows: list[ExpertRow]) -> str:
    """One CSV row per expert (empty statistics for a dead expert)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPERT_CSV_FIELDS)
    for r in rows:
        d = r.to_dict()
        cells = []
        for f in EXPERT_CSV_FIELDS:
            v = d.get(f)
            cells.append("" if v is None else " ".join(map(str, v)) if isinstance(v, list)
                         else repr(v) if isinstance(v, float) else v)
        writer.writerow(cells)
    return out.getvalue()


def format_expert_table(name: str, rows: list[ExpertRow]) -> str:
    """Per-expert statistics of one tensor, aligned columns, status marked."""
    cells = [expert_cells(r) + [r.status if r.status != "ok" else ""] for r in rows]
    header = EXPERT_COLUMNS + [""]
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(len(header))]
    lines = [f"Experts of {name} ({len(rows)})", ""]
    lines.append("  ".join(h.rjust(widths[i]) for i, h in enumerate(header)).rstrip())
    lines.append("=" * len(lines[-1]))
    for c in cells:
        lines.append("  ".join(v.rjust(widths[i]) for i, v in enumerate(c)).rstrip())
    return "\n".join(lines) + "\n"


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


def format_json(report: StatsReport, *, sort: str | None = None, reverse: bool = False,
                coverage: Coverage | None = None) -> str:
    data = report.to_dict()
    data["tensors"] = [_tensor_json(t) for t in sort_tensors(report.tensors, sort, reverse)]
    if coverage is not None and coverage.is_moe:
        data["experts"] = coverage.to_dict()
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
