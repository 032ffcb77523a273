"""Text renderings of plans, checks, recipes read back and model type diffs (layer 3)."""

from __future__ import annotations

import shlex

from imatui.imatrix import split_name
from imatui.plan.check import CheckReport
from imatui.plan.planner import Plan
from imatui.plan.qtypes import ggml_name


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.2f} MB"


def _kinds_in_order(names: list[str]) -> list[str]:
    kinds: list[str] = []
    for n in names:
        layer, kind = split_name(n)
        if layer is not None and kind not in kinds:
            kinds.append(kind)
    return kinds


def format_plan(plan: Plan, *, command: list[str] | None = None, recipe_path: str | None = None,
                cache_path: str | None = None) -> str:
    m = plan.model
    out: list[str] = []
    src = ("measured: llama-quantize probes, read back and dequantized with gguf-py"
           if plan.source == "llama-quantize" else "ESTIMATES (no llama-quantize): gguf-py reference quantizers")
    out.append(f"model   {m.path.name}: {len(m.tensors)} tensors, {m.n_elements / 1e6:.1f}M weights, "
               f"{_mb(m.file_size)}")
    out.append(f"errors  {src}")
    if cache_path:
        out.append(f"cache   {cache_path}")
    for note in plan.notes:
        out.append(f"note    {note}")
    out.append(f"budget  {plan.budget_text}: {plan.budget_bytes:,} bytes")
    total = plan.total_error or 1.0
    out.append(f"plan    {plan.file_bytes:,} bytes ({_mb(plan.file_bytes)}), {plan.bpw:.3f} bpw, total error "
               f"{plan.total_error:.5g} (header {plan.header_bytes:,} bytes "
               f"{'measured' if plan.header_measured else 'estimated'}, "
               f"{plan.fixed_bytes:,} bytes of tensors kept as they are)")
    if plan.mix:
        mix_err = plan.mix.get("error")
        mix_text = f"{mix_err:.5g}" if mix_err is not None else "not comparable (a type of it was not probed)"
        out.append(f"mix     llama-quantize's {plan.mix['name']}: {plan.mix['file_size']:,} bytes, total error "
                   f"{mix_text} by the same measure")
    out.append("")

    # per layer: the chosen type of each weight, bits per weight, share of the error
    by_name = {t.name: t for t in plan.tensors}
    kinds = _kinds_in_order(list(by_name))
    widths = [max(len(k), 6) for k in kinds]
    head = f"{'layer':>5} {'bpw':>5} {'err%':>5}  " + " ".join(k.rjust(w) for k, w in zip(kinds, widths))
    out.append("per layer (chosen type per weight; bpw and share of the total error)")
    outside = [t for t in plan.tensors if t.layer is None]
    for t in outside:
        bpw = t.chosen.bytes * 8 / t.n_elements
        out.append(f"{'-':>5} {bpw:5.2f} {100 * t.chosen.error / total:5.1f}  {t.name} {ggml_name(t.chosen.type)}")
    out.append(head)
    layers = sorted({t.layer for t in plan.tensors if t.layer is not None})
    for layer in layers:
        ts = [t for t in plan.tensors if t.layer == layer]
        bytes_ = sum(t.chosen.bytes for t in ts)
        n = sum(t.n_elements for t in ts)
        err = sum(t.chosen.error for t in ts)
        cells = []
        for k, w in zip(kinds, widths):
            t = next((t for t in ts if t.kind == k), None)
            cells.append((ggml_name(t.chosen.type) if t else "").rjust(w))
        out.append(f"{layer:>5} {bytes_ * 8 / max(1, n):5.2f} {100 * err / total:5.1f}  " + " ".join(cells))
    out.append("")

    # where the bits went: by kind, bytes and error against the cheapest choice
    out.append("where the bits went (by kind: bits per weight, share of the bytes and of the error; "
               "'saved' = error removed by paying above each weight's cheapest type)")
    rows = []
    all_bytes = sum(t.chosen.bytes for t in plan.tensors) or 1
    for kind in sorted({t.kind for t in plan.tensors}):
        ts = [t for t in plan.tensors if t.kind == kind]
        b = sum(t.chosen.bytes for t in ts)
        n = sum(t.n_elements for t in ts)
        e = sum(t.chosen.error for t in ts)
        floor = sum(min(t.options, key=lambda o: o.bytes).error for t in ts)
        mix_bpw = ""
        if plan.mix:
            from imatui.plan.qtypes import row_bytes

            mb = 0
            for t in ts:
                typ = plan.mix["types"].get(t.name)
                mt = plan.model.tensors[t.name]
                mb += mt.n_rows * row_bytes(typ, mt.n_per_row) if typ else 0
            mix_bpw = f"{mb * 8 / max(1, n):6.2f}"
        rows.append((b * 8 / max(1, n), kind, len(ts), 100 * b / all_bytes, 100 * e / total, floor - e, mix_bpw))
    mix_head = f" {plan.mix['name'][:6]:>6}" if plan.mix else ""
    out.append(f"  {'kind':<16} {'n':>3} {'bpw':>6}{mix_head} {'bytes%':>6} {'err%':>6} {'saved':>9}")
    for bpw, kind, n, bshare, eshare, saved, mix_bpw in sorted(rows, reverse=True):
        mix_cell = f" {mix_bpw}" if plan.mix else ""
        out.append(f"  {kind:<16} {n:>3} {bpw:6.2f}{mix_cell} {bshare:6.1f} {eshare:6.1f} {saved:9.4g}")
    worst = sorted(plan.tensors, key=lambda t: -t.chosen.error)[:5]
    out.append("  largest errors left: " + ", ".join(
        f"{t.name} {ggml_name(t.chosen.type)} {100 * t.chosen.error / total:.1f}%" for t in worst))
    out.append("  why: each step up a weight's ladder costs bytes and removes error; the solver buys the steps that "
               "remove the most error per byte until the budget is spent, so bits go where the imatrix-weighted "
               "error falls fastest, not where the weights are largest")
    if recipe_path and command:
        out.append("")
        out.append(f"recipe  {recipe_path} ({len(plan.tensors)} lines)")
        out.append("run     " + shlex.join(command))
    return "\n".join(out) + "\n"


def format_check(report: CheckReport) -> str:
    out = [f"model   {report.model}", f"imatrix {report.imatrix}",
           f"{report.n_matched} of {report.n_weights} quantizable weights have an imatrix entry"]
    for level in ("error", "warning", "info"):
        for f in report.findings:
            if f.level == level:
                out.append(f"{level:<7} {f.message}")
    refusing = report.refusing_types()
    out.append("types that would refuse to run: " + (", ".join(ggml_name(t) for t in refusing) if refusing else
                                                      "none (every weight that needs data has it)"))
    n_err = len(report.errors)
    out.append("llama-quantize would abort: fix the errors above" if n_err else
               "llama-quantize would run with this imatrix")
    return "\n".join(out) + "\n"


def format_from(path: str, types: dict[str, str], keys: dict[str, object], ftype: object,
                recipe_path: str | None) -> str:
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    out = [f"model   {path}: {len(types)} quantizable weights, general.file_type {ftype}",
           "types   " + ", ".join(f"{ggml_name(t)} ×{n}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))]
    if keys:
        for k, v in keys.items():
            out.append(f"{k} = {v}")
    else:
        out.append("no quantize.imatrix.* keys: quantized without an imatrix (or the keys were removed)")
    if recipe_path:
        out.append(f"recipe  {recipe_path} ({len(types)} lines, for llama-quantize --tensor-type-file)")
    return "\n".join(out) + "\n"


def format_model_diff(a: str, b: str, rows: list[tuple[str, str | None, str | None]], n_a: int, n_b: int) -> str:
    if not rows:
        return f"{a} and {b}: every tensor has the same type ({n_a} tensors)\n"
    w = max(len(r[0]) for r in rows)
    out = [f"{'tensor':<{w}}  {'A':>8}  {'B':>8}"]
    for name, ta, tb in rows:
        out.append(f"{name:<{w}}  {ggml_name(ta) if ta else '-':>8}  {ggml_name(tb) if tb else '-':>8}")
    out.append(f"{len(rows)} tensors differ (A = {a}, {n_a} tensors; B = {b}, {n_b} tensors)")
    return "\n".join(out) + "\n"
