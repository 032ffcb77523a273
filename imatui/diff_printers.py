"""Text, JSON and CSV renderings of a DiffReport (imatui diff A B --format ...).

Rows come most different first (lowest cosine) unless a sort column is given; tensors that cannot be
compared (only in one file, shapes differ, no tokens) follow, with the reason.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import secrets
from typing import Any, Callable, Iterable

from imatui import numfmt
from imatui.errors import ImatrixError
from imatui.stats.diff import DiffReport, TensorDiff
from imatui.stats.experts import TensorExpertDiff

# column -> (key, descending by default). Missing values always sort last (see sort_rows).
SORT_KEYS: dict[str, tuple[Callable[[TensorDiff], Any], bool]] = {
    "name": (lambda t: t.name, False),
    "layer": (lambda t: (-1 if t.layer is None else t.layer, t.kind), False),
    "kind": (lambda t: (t.kind, -1 if t.layer is None else t.layer), False),
    "sum_a": (lambda t: t.sum_a, True),
    "sum_b": (lambda t: t.sum_b, True),
    "sum_ratio": (lambda t: t.sum_ratio, True),
    "cossim": (lambda t: t.cossim, False),  # most different first
    "js": (lambda t: t.js, True),
    "rank_a": (lambda t: t.rank_a, False),
    "rank_b": (lambda t: t.rank_b, False),
    "rank_shift": (lambda t: None if t.rank_shift is None else abs(t.rank_shift), True),  # most moved
    "top_channel": (lambda t: t.top_channel, False),
    "top_share_delta": (lambda t: None if t.top_share_delta is None else abs(t.top_share_delta), True),
    # the TUI's A / B / Δ views sort by these too; a Δ sorts by size, largest change first
    "sum_delta": (lambda t: None if t.sum_a is None or t.sum_b is None else abs(t.sum_b - t.sum_a), True),
    "top_value_a": (lambda t: t.top_value_a, True),
    "top_value_b": (lambda t: t.top_value_b, True),
    "top_delta": (lambda t: None if t.top_value_a is None else abs(t.top_value_b - t.top_value_a), True),
}
DEFAULT_SORT = "cossim"
CSV_FIELDS = ["name", "layer", "kind", "sum_a", "sum_b", "sum_ratio", "cossim", "js", "rank_a", "rank_b",
              "rank_shift", "top_channel", "top_value_a", "top_value_b", "top_share_delta", "comparable",
              "reason", "n_mat", "n_in", "experts_compared", "experts_skipped"]


def sort_rows(rows: Iterable[TensorDiff], column: str | None = None, reverse: bool = False) -> list[TensorDiff]:
    """Rows ordered by a column (its natural direction; reverse flips it); missing values last.

    A leading "-" on the column name also reverses ("-cossim": most similar first). Ties fall back
    to the name so the order is stable across runs.
    """
    column = column or DEFAULT_SORT
    if column.startswith("-"):
        column, reverse = column[1:], not reverse
    if column not in SORT_KEYS:
        raise ImatrixError(f"unknown sort column {column!r}; one of: {', '.join(SORT_KEYS)}")
    key, descending = SORT_KEYS[column]
    rows = sorted(rows, key=lambda t: t.name)
    present = [t for t in rows if key(t) is not None]
    missing = [t for t in rows if key(t) is None]
    present.sort(key=key, reverse=descending != reverse)
    return present + missing


def _clean(value: Any) -> Any:
    """JSON never carries NaN or Infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _shape(t: TensorDiff) -> tuple[int | None, int | None]:
    shape = t.shape_a or t.shape_b
    return (None, None) if shape is None else shape


def format_json(report: DiffReport, sort: str | None = None,
                experts: list[TensorExpertDiff] | None = None) -> str:
    """Indented JSON, each row of the long arrays (tensors, layers, the experts of each expert
    tensor: 44,544 of them in a DeepSeek diff) on one line, written by json's C encoder."""
    mark = secrets.token_hex(8)  # no name in a file can forge it
    arrays: list[list[str]] = []

    def rows(items: list[str]) -> str:
        arrays.append(items)
        return f"{mark} {len(arrays) - 1}"

    d = report.to_dict()
    d["tensors"] = rows([json.dumps(_clean(t.to_dict()), allow_nan=False)
                         for t in sort_rows(report.tensors, sort)])
    d["layers"] = rows([json.dumps(_clean(lay), allow_nan=False) for lay in d["layers"]])
    if experts:
        d["experts"] = []
        for x in experts:
            xd = x.to_dict()
            # one C-encoder call a tensor: its items are flat dicts of numbers (None for no cosine),
            # so "}, {" is only ever the seam between two of them
            flat = json.dumps(xd["experts"], allow_nan=False)[1:-1]
            xd["experts"] = rows(flat.replace("}, {", "}\0{").split("\0") if flat else [])
            d["experts"].append(xd)
    text = json.dumps(_clean(d), indent=2, allow_nan=False)

    def expand(m: re.Match) -> str:
        items = arrays[int(m[1])]
        if not items:
            return "[]"
        line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]  # '    "key": ' before the array
        pad = " " * (len(line) - len(line.lstrip()))
        return "[\n" + ",\n".join(pad + "  " + r for r in items) + "\n" + pad + "]"

    return re.sub(f'"{mark} (\\d+)"', expand, text) + "\n"


def format_csv(report: DiffReport, sort: str | None = None) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for t in sort_rows(report.tensors, sort):
        n_mat, n_in = _shape(t)
        d = t.to_dict()
        d.update(n_mat=n_mat, n_in=n_in)
        w.writerow(["" if d[f] is None or (isinstance(d[f], float) and not math.isfinite(d[f])) else
                    (repr(d[f]) if isinstance(d[f], float) else d[f]) for f in CSV_FIELDS])
    return out.getvalue()


def fmt_num(value: float | None, spec: str = ".4g") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, spec)


def fmt_sum(value: float | None) -> str:
    """A Σ(Act²) as every view shows it (imatui.numfmt)."""
    return numfmt.sum2(value)


def fmt_value(value: float | None) -> str:
    """One channel's value (a top channel) as every view shows it (imatui.numfmt)."""
    return numfmt.value(value)


def fmt_shift(value: int | None) -> str:
    return "-" if value is None else f"{value:+d}" if value else "0"


def channel_label(t: TensorDiff) -> str:
    """The top channel: its index, or expert:channel for a MoE tensor (n_mat > 1)."""
    if t.top_channel is None:
        return "-"
    shape = t.shape_a or t.shape_b
    if shape is not None and shape[0] > 1:
        return f"e{t.top_channel // shape[1]}:{t.top_channel % shape[1]}"
    return str(t.top_channel)


def fmt_top(t: TensorDiff) -> str:
    if t.top_channel is None:
        return ""
    return f"{channel_label(t)}: {fmt_value(t.top_value_a)} → {fmt_value(t.top_value_b)}"


def _datasets(ds: list[str]) -> str:
    return ", ".join(ds) if ds else "(none)"


def header_lines(report: DiffReport, compact: bool = False) -> list[str]:
    """A and B, what differs in their headers, and a one-line summary. compact (the TUI): shorter
    lines, the container format only where it differs."""
    h = {x.field: x for x in report.header}
    lines = []
    for side, path in (("a", report.a), ("b", report.b)):
        v = {k: getattr(x, side) for k, x in h.items()}
        if compact:
            lines.append(f"{side.upper()}: {path} · {v['chunk_count']} chunks × {v['chunk_size']} · "
                         f"{_datasets(v['datasets'])}")
        else:
            lines.append(f"{side.upper()}: {path}  ({v['format']}, {v['tensors']} tensors, "
                         f"{v['chunk_count']} chunks of {v['chunk_size']}, datasets: {_datasets(v['datasets'])})")
    diffs = [x for x in report.header_differences if compact or x.field != "format"]
    if diffs:
        parts = []
        for x in diffs:
            a, b = (_datasets(x.a), _datasets(x.b)) if x.field == "datasets" else (x.a, x.b)
            parts.append(f"{x.field.replace('_', ' ')} {a} ≠ {b}")
        lines.append("differs: " + "; ".join(parts))
    else:
        lines.append("same chunk size, chunk count and datasets")
    comp = report.comparable
    others = (len(report.only_a), len(report.only_b), len(report.tensors) - len(comp))
    if comp and compact:
        cos = [t.cossim for t in comp if t.cossim is not None]
        lines[-1] += (f" · {len(comp)}/{len(report.tensors)} compared, cosine min {min(cos):.4f} mean "
                      f"{sum(cos) / len(cos):.4f} · only in A: {others[0]}, only in B: {others[1]}, "
                      f"not comparable: {others[2]}")
    elif comp:
        cos = [t.cossim for t in comp if t.cossim is not None]
        lines.append(f"{len(comp)} of {len(report.tensors)} tensors compared; cosine min {min(cos):.4f}, "
                     f"mean {sum(cos) / len(cos):.4f}; only in A: {others[0]}, only in B: "
                     f"{others[1]}, not comparable: {others[2]}")
    else:
        lines.append(f"no tensor could be compared ({len(report.tensors)} in A or B)")
    return lines


TABLE_COLUMNS = ["Tensor", "Σ A", "Σ B", "B/A", "CosSim", "JS", "Rank A", "Rank B", "Shift",
                 "Top channel (A → B)"]


def table_cells(t: TensorDiff) -> list[str]:
    if not t.comparable:
        return [t.name, fmt_sum(t.sum_a), fmt_sum(t.sum_b), fmt_num(t.sum_ratio, ".3f"), "-", "-",
                fmt_num(t.rank_a, "d"), fmt_num(t.rank_b, "d"), fmt_shift(t.rank_shift),
                f"not comparable: {t.reason}"]
    return [t.name, fmt_sum(t.sum_a), fmt_sum(t.sum_b), fmt_num(t.sum_ratio, ".3f"),
            fmt_num(t.cossim, ".4f"), fmt_num(t.js, ".4f"), fmt_num(t.rank_a, "d"), fmt_num(t.rank_b, "d"),
            fmt_shift(t.rank_shift), fmt_top(t)]


def format_table(report: DiffReport, sort: str | None = None) -> str:
    rows = [table_cells(t) for t in sort_rows(report.tensors, sort)]
    widths = [max([len(TABLE_COLUMNS[i])] + [len(r[i]) for r in rows]) for i in range(len(TABLE_COLUMNS))]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(widths[i + 1]) for i, c in enumerate(cells[1:-1])]
        out.append(cells[-1])
        return "  ".join(out).rstrip()

    text = header_lines(report) + ["", line(TABLE_COLUMNS), "-" * len(line(TABLE_COLUMNS))]
    text += [line(r) for r in rows]
    for label, names in (("only in A", report.only_a), ("only in B", report.only_b)):
        if names:
            text.append(f"{label}: " + ", ".join(names))
    return "\n".join(text) + "\n"


def _ids(experts: list[int], limit: int = 8) -> str:
    if not experts:
        return "-"
    more = f" +{len(experts) - limit}" if len(experts) > limit else ""
    return " ".join(str(e) for e in experts[:limit]) + more


EXPERT_DIFF_COLUMNS = ["Tensor", "Min cos (expert)", "Mean cos", "Largest share shift", "Dead only in A",
                       "Dead only in B"]


def expert_diff_cells(x: TensorExpertDiff) -> list[str]:
    low = "-" if x.min_cossim is None else f"{x.min_cossim:.4f} (e{x.min_expert})"
    e = x.experts[x.max_shift_expert]
    shift = f"e{e.expert}: {e.share_a * 100:.2f}% → {e.share_b * 100:.2f}%"
    only_a = sorted(set(x.dead_a) - set(x.dead_b))
    only_b = sorted(set(x.dead_b) - set(x.dead_a))
    return [x.name, low, fmt_num(x.mean_cossim, ".4f"), shift, _ids(only_a), _ids(only_b)]


def expert_diff_line(x: TensorExpertDiff) -> str:
    """Two lines for the app's diff detail: the tensor's experts compared."""
    low, mean, shift, only_a, only_b = expert_diff_cells(x)[1:]
    text = f"experts: least similar {low} · mean cos {mean}\nlargest share shift {shift}"
    if only_a != "-":
        text += f" · dead only in A: {only_a}"
    if only_b != "-":
        text += f" · dead only in B: {only_b}"
    return text


def format_expert_diff(experts: list[TensorExpertDiff]) -> str:
    """The per-expert section of `imatui diff` for MoE files: one line per expert tensor, least
    similar expert first within the tensor, then the least similar experts of the whole file."""
    if not experts:
        return ""
    rows = [expert_diff_cells(x) for x in experts]
    widths = [max([len(EXPERT_DIFF_COLUMNS[i])] + [len(r[i]) for r in rows]) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in (0, 3, 4, 5) else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    text = ["", f"Experts ({len(experts)} MoE tensors, compared expert by expert: cosine of each expert's "
                "channels, share of the routed tokens)", "", line(EXPERT_DIFF_COLUMNS),
            "-" * len(line(EXPERT_DIFF_COLUMNS))]
    text += [line(r) for r in rows]
    pairs = [(e.cossim, x.name, e) for x in experts for e in x.experts if e.cossim is not None]
    pairs.sort(key=lambda p: (p[0], p[1], p[2].expert))
    if pairs:
        text.append("")
        text.append("least similar experts: " + "; ".join(
            f"{name} e{e.expert} {cos:.4f} ({e.tokens_a} → {e.tokens_b} tokens)" for cos, name, e in pairs[:5]))
    return "\n".join(text) + "\n"


def format_diff(report: DiffReport, fmt: str = "table", sort: str | None = None,
                experts: list[TensorExpertDiff] | None = None) -> str:
    """`experts`: imatui.stats.experts.diff_experts(a, b) for MoE files (a section in table and JSON)."""
    if fmt == "json":
        return format_json(report, sort, experts)
    if fmt == "csv":
        return format_csv(report, sort)
    if fmt == "table":
        return format_table(report, sort) + format_expert_diff(experts or [])
    raise ImatrixError(f"unknown format {fmt!r}; one of: table, json, csv")
