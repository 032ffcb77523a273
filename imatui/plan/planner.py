"""From an error table and a budget to one type per weight, and the size llama-quantize will write.

Size of the output file = the bytes before the tensor data (header, key-values, tensor infos,
padding: measured from a probe file when there is one, else the source's plus the keys that
llama-quantize adds) + every tensor's bytes padded to the file's alignment. The weights that
llama-quantize never quantizes (norms, router gates, 1-D tensors) keep their source bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from imatui.errors import ImatrixError
from imatui.imatrix import Imatrix, split_name
from imatui.plan.check import check
from imatui.plan.model import Model
from imatui.plan.probe import ErrorTable
from imatui.plan.qtypes import HIGH_PRECISION, NEEDS_IMATRIX, needs_imatrix, real_type, row_bytes
from imatui.plan.solver import InfeasibleBudget, Option, solve

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'80M' -> 80_000_000, '1.5GiB' -> 1.5·2^30, '123456' -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ImatrixError(f"--size {text!r}: give bytes or a number with K, M, G, T (powers of 1000) "
                           "or KiB, MiB, GiB (powers of 1024)")
    value, unit, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    power = "kmgt".index(unit) + 1 if unit else 0
    return int(value * (1024 if binary else 1000) ** power)


def align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _kv_bytes(key: str, value_bytes: int) -> int:
    return 8 + len(key.encode()) + 4 + value_bytes


def estimated_header(model: Model, imatrix_path: Path, imatrix: Imatrix) -> int:
    """The source's header plus the quantize.imatrix.* keys llama-quantize adds (used until a probe
    file gives the exact figure)."""
    extra = _kv_bytes("quantize.imatrix.file", 8 + len(str(imatrix_path).encode()))
    extra += _kv_bytes("quantize.imatrix.dataset", 4 + 8 + sum(8 + len(d.encode()) for d in imatrix.datasets))
    extra += _kv_bytes("quantize.imatrix.entries_count", 4) + _kv_bytes("quantize.imatrix.chunks_count", 4)
    if "general.quantization_version" not in model.metadata:
        extra += _kv_bytes("general.quantization_version", 4)
    return align(model.data_offset + extra, model.alignment)


@dataclass
class TensorChoice:
    name: str
    n_elements: int
    has_imatrix: bool
    source_type: str
    options: list[Option]
    chosen: Option | None = None

    @property
    def layer(self) -> int | None:
        return split_name(self.name)[0]

    @property
    def kind(self) -> str:
        return split_name(self.name)[1]


@dataclass
class Plan:
    model: Model
    source: str  # "llama-quantize" (measured) or "gguf-py" (estimates)
    tensors: list[TensorChoice]
    fixed_bytes: int  # tensors llama-quantize leaves as they are
    header_bytes: int
    header_measured: bool
    budget_bytes: int  # the file size allowed
    budget_text: str
    mix: dict | None = None  # --like: {"name", "file_size", "types", "error"}
    notes: list[str] = field(default_factory=list)

    @property
    def tensor_bytes(self) -> int:
        return self.fixed_bytes + sum(t.chosen.bytes for t in self.tensors if t.chosen)

    @property
    def file_bytes(self) -> int:
        return self.header_bytes + self.tensor_bytes

    @property
    def bpw(self) -> float:
        """Bits per weight as llama-quantize prints them: tensor bytes · 8 / all elements."""
        return self.tensor_bytes * 8 / max(1, self.model.n_elements)

    @property
    def total_error(self) -> float:
        return sum(t.chosen.error for t in self.tensors if t.chosen)

    def types(self) -> dict[str, str]:
        return {t.name: t.chosen.type for t in self.tensors if t.chosen}


def logits_tensor(model: Model) -> str | None:
    """The weight that produces the logits: output.weight, or token_embd.weight when tied."""
    for name in ("output.weight", "token_embd.weight"):
        if name in model.tensors:
            return name
    return None


def default_head_weight(model: Model) -> float:
    """How much more the logits' weight counts than any other: its noise reaches the logits as it is,
    while a block's is one of n_blocks contributions to the residual stream; so n_blocks."""
    blocks = model.metadata.get(f"{model.architecture}.block_count")
    if blocks:
        return float(blocks)
    layers = {split_name(n)[0] for n in model.tensors} - {None}
    return float(max(1, len(layers)))


def tensor_options(model: Model, imatrix: Imatrix, table: ErrorTable,
                   head_weight: float = 1.0) -> tuple[list[TensorChoice], int]:
    """Each quantizable weight's options (one per type it can really get), and the fixed bytes.
    The logits' weight has its errors multiplied by head_weight."""
    choices: list[TensorChoice] = []
    fixed = 0
    head = logits_tensor(model)
    for t in model.tensors.values():
        if not t.quantizable:
            fixed += align(t.nbytes, model.alignment)
            continue
        measured = table.errors.get(t.name, {})
        best: dict[str, float] = {}
        for real, err in measured.values():
            if real in best and best[real] <= err:
                continue
            best[real] = err
        has_data = t.name in imatrix.entries
        if t.type in HIGH_PRECISION and t.type != "F32":
            best[t.type] = 0.0 if t.type != "F16" else best.get("F16", 0.0)
        scale = head_weight if t.name == head else 1.0
        options = [Option(real, align(t.n_rows * row_bytes(real, t.n_per_row), model.alignment), err * scale)
                   for real, err in sorted(best.items())
                   if has_data or not needs_imatrix(t.name, real)]
        if not options:
            raise ImatrixError(f"{t.name}: no type measured for it (the error cache is incomplete: delete it)")
        choices.append(TensorChoice(t.name, t.n_elements, has_data, t.type, options))
    return choices, fixed


def smallest_tensor_bytes(model: Model, imatrix: Imatrix, types: tuple[str, ...]) -> int:
    """The least tensor bytes any plan over these types can reach (known before measuring anything,
    so a budget below it fails at once instead of after the probes)."""
    total = 0
    for t in model.tensors.values():
        if not t.quantizable:
            total += align(t.nbytes, model.alignment)
            continue
        has_data = t.name in imatrix.entries
        reals = {real_type(x, t.n_per_row) for x in types} | {"F16"}
        total += min(align(t.n_rows * row_bytes(r, t.n_per_row), model.alignment) for r in reals
                     if has_data or not needs_imatrix(t.name, r))
    return total


def check_budget(model: Model, imatrix: Imatrix, imatrix_path: Path, types: tuple[str, ...], *,
                 size: int | None, bpw: float | None, budget_text: str, estimates: bool) -> None:
    smallest = smallest_tensor_bytes(model, imatrix, types)
    header = estimated_header(model, imatrix_path, imatrix)
    if size is not None:
        ok = size >= smallest + header
    else:
        ok = bpw is None or int(bpw * model.n_elements / 8) >= smallest
    if not ok:
        _too_small(budget_text, smallest, header, model, estimates)


def _too_small(budget_text: str, smallest: int, header: int, model: Model, estimates: bool) -> None:
    hint = " with the types gguf-py can estimate; llama-quantize offers smaller ones" if estimates else ""
    raise ImatrixError(f"budget {budget_text} is below the smallest plan this model allows "
                       f"({(smallest + header) / 1e6:.2f} MB, {smallest * 8 / model.n_elements:.2f} bpw{hint})"
                       ": raise the budget")


def validate(model: Model, imatrix: Imatrix) -> None:
    """Refuse an imatrix that llama-quantize would refuse (or that belongs to another model)."""
    report = check(model, imatrix)
    errors = report.errors
    if errors:
        first = errors[0].message
        more = f" (and {len(errors) - 1} more problems: imatui check shows them)" if len(errors) > 1 else ""
        raise ImatrixError(f"{imatrix.path or 'imatrix'}: {first}{more}")


def make_plan(model: Model, imatrix: Imatrix, imatrix_path: Path, table: ErrorTable, *,
              size: int | None = None, bpw: float | None = None, like: dict | None = None,
              budget_text: str = "", head_weight: float | None = None) -> Plan:
    """Choose the types: exactly one of size (file bytes), bpw, like (a mix from probe.mix_of).
    head_weight: the factor on the logits' weight's error (default: the number of blocks)."""
    if head_weight is None:
        head_weight = default_head_weight(model)
    tensors, fixed = tensor_options(model, imatrix, table, head_weight)
    header = table.header_bytes if table.header_bytes else estimated_header(model, imatrix_path, imatrix)
    header_measured = bool(table.header_bytes)
    mix_info = None
    if like is not None:
        size = int(like["file_size"])
        header = int(like.get("header_bytes") or header)
        header_measured = True
        mix_info = dict(like)
        mix_info["error"] = _mix_error(tensors, like["types"])
    if size is not None:
        budget_file = size
        budget_tensors = size - header - fixed
    elif bpw is not None:
        tensor_total = int(bpw * model.n_elements / 8)
        budget_tensors = tensor_total - fixed
        budget_file = tensor_total + header
    else:
        raise ImatrixError("give a budget: --size, --bpw or --like")
    plan = Plan(model=model, source=table.source, tensors=tensors, fixed_bytes=fixed, header_bytes=header,
                header_measured=header_measured, budget_bytes=budget_file, budget_text=budget_text, mix=mix_info)
    items = [t.options for t in tensors]
    try:
        picks = solve(items, budget_tensors)
    except InfeasibleBudget as exc:
        _too_small(budget_text or str(budget_file), exc.minimum + fixed, header, model, table.source == "gguf-py")
    for t, i in zip(tensors, picks):
        t.chosen = t.options[i]
    if table.source == "gguf-py":
        plan.notes.append("errors are estimates: gguf-py's reference quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; "
                          "they ignore the imatrix, so the errors are upper bounds) and an exact F16 rounding; "
                          "K and IQ types need llama-quantize (on PATH or --llama-quantize)")
    head = logits_tensor(model)
    if head and head_weight != 1.0:
        plan.notes.append(f"{head} makes the logits{' (tied embeddings)' if head == 'token_embd.weight' else ''}: "
                          f"its error counts {head_weight:g}× (--head-weight)")
    no_data = [t.name for t in tensors if not t.has_imatrix]
    if no_data:
        several = len(no_data) > 1
        plan.notes.append(f"{len(no_data)} weight{'s have' if several else ' has'} no imatrix entry "
                          f"({'their' if several else 'its'} errors weigh every input channel alike; "
                          f"{', '.join(NEEDS_IMATRIX)} are not offered to {'them' if several else 'it'})")
    return plan


def _mix_error(tensors: list[TensorChoice], types: dict[str, str]) -> float | None:
    total = 0.0
    for t in tensors:
        want = types.get(t.name)
        match = next((o for o in t.options if o.type == want), None)
        if match is None:
            return None
        total += match.error
    return total
