"""Before quantizing: what llama-quantize would complain about, given this model and this imatrix.

Each rule mirrors llama.cpp (src/llama-quant.cpp, tools/quantize/quantize.cpp, tools/imatrix):
- an entry is used when its name is the weight's name and it holds ne[0]·ne[2] values; any other
  size aborts the quantization ("imatrix size ... is different from tensor size"), except for
  token_embd;
- a weight with no entry is quantized with uniform weights, and the types in NEEDS_IMATRIX abort
  on it ("Missing importance matrix for tensor ... in a very low-bit quantization");
- an expert with count 0 is quantized with uniform weights (quantize.cpp substitutes 1);
- non-finite values abort ("imatrix contains non-finite value").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from imatui.imatrix import Imatrix, split_name
from imatui.plan.model import Model
from imatui.plan.qtypes import NEEDS_IMATRIX

ERROR, WARNING, INFO = "error", "warning", "info"
# mixes whose rules put a type from NEEDS_IMATRIX on ordinary weights
MIXES_NEEDING_DATA = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
_SUFFIX = re.compile(r"\s*\((?:reshaped|view|copy|permuted|transposed)\)\s*$")


@dataclass
class Finding:
    level: str  # error (llama-quantize aborts), warning (it runs, with less data), info
    topic: str
    message: str
    tensors: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    model: str
    imatrix: str
    findings: list[Finding]
    n_weights: int
    n_matched: int

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def refusing_types(self) -> list[str]:
        """The target types llama-quantize would refuse to run with this imatrix."""
        missing = any(f.topic in ("no-entry", "mla-missing", "nextn") for f in self.findings)
        return list(NEEDS_IMATRIX) if missing else []


def _short(names: list[str], n: int = 4) -> str:
    head = ", ".join(names[:n])
    return head + (f" and {len(names) - n} more" if len(names) > n else "")


def _is_nextn(name: str, model: Model) -> bool:
    if "nextn" in name or ".mtp" in name:
        return True
    layer = split_name(name)[0]
    n_layers = model.metadata.get(f"{model.architecture}.block_count")
    n_mtp = model.metadata.get(f"{model.architecture}.nextn_predict_layers")
    return bool(layer is not None and n_layers and n_mtp and layer >= int(n_layers) - int(n_mtp))


def check(model: Model, imatrix: Imatrix) -> CheckReport:
    findings: list[Finding] = []
    weights = [t for t in model.tensors.values() if t.quantizable]
    entries = imatrix.entries
    matched = [t for t in weights if t.name in entries]

    # names: entries the model has no weight for
    unused = [n for n in entries if n not in model.tensors]
    suffixed = [n for n in unused if _SUFFIX.search(n) and _SUFFIX.sub("", n) in model.tensors]
    kv_b = [n for n in unused if n.endswith("attn_kv_b.weight")
            and n.replace("attn_kv_b", "attn_k_b") in model.tensors]
    other_unused = [n for n in unused if n not in suffixed and n not in kv_b]
    if weights and entries and len(matched) < max(1, len([t for t in weights if t.name != "token_embd.weight"]) // 2):
        findings.append(Finding(ERROR, "other-model",
                                f"the imatrix does not belong to this model: only {len(matched)} of its "
                                f"{len(entries)} entries name a weight of it (e.g. {_short(other_unused, 2)})",
                                other_unused))
    elif other_unused:
        findings.append(Finding(WARNING, "unused",
                                f"{len(other_unused)} imatrix entries name no weight of this model and are "
                                f"ignored: {_short(other_unused)}", other_unused))
    if suffixed:
        findings.append(Finding(WARNING, "suffixed-name",
                                f"{len(suffixed)} entries carry a ggml suffix such as '(reshaped)' and never "
                                f"match the weight's name, so llama-quantize ignores them: {_short(suffixed)} "
                                "(collect again with a llama-imatrix that strips it, or rename the entries)",
                                suffixed))
    if kv_b:
        findings.append(Finding(WARNING, "mla-split",
                                f"the imatrix has {len(kv_b)} attn_kv_b entries but the model splits MLA's "
                                "kv_b into attn_k_b/attn_v_b: those get no data (collect the imatrix on this "
                                "GGUF)", kv_b))

    # weights with no entry, by reason
    missing = [t.name for t in weights if t.name not in entries]
    lookups = [n for n in missing if n in ("token_embd.weight", "per_layer_token_embd.weight")]
    output = [n for n in missing if n == "output.weight"]
    nextn = [n for n in missing if n not in lookups and n not in output and _is_nextn(n, model)]
    mla = [n for n in missing if ("attn_k_b" in n or "attn_v_b" in n) and n not in nextn]
    rest = [n for n in missing if n not in lookups + output + nextn + mla]
    refuse = ", ".join(NEEDS_IMATRIX)
    if lookups:
        findings.append(Finding(INFO, "lookup", "token_embd has no entry (normal: it is a lookup, not a "
                                "matrix product); llama-quantize quantizes it without data", lookups))
    if output:
        findings.append(Finding(INFO, "output", "output.weight has no entry (llama-imatrix skips it unless "
                                "run with --process-output); it is quantized without data", output))
    if nextn:
        findings.append(Finding(WARNING, "nextn",
                                f"{len(nextn)} MTP/nextn weights have no entry (llama-imatrix does not run the "
                                f"prediction head): {_short(nextn)}; {refuse} abort on them", nextn))
    if mla:
        findings.append(Finding(WARNING, "mla-missing",
                                f"{len(mla)} MLA attn_k_b/attn_v_b weights have no entry: {_short(mla)}; "
                                f"{refuse} abort on them", mla))
    if rest:
        findings.append(Finding(WARNING, "no-entry",
                                f"{len(rest)} weights have no entry: {_short(rest)}; llama-quantize uses "
                                f"uniform weights there and {refuse} abort on them", rest))

    # sizes: llama-quantize aborts on any mismatch but token_embd's
    wrong_size = [t for t in matched if entries[t.name].size != t.n_per_row * t.n_mat]
    for t in wrong_size[:3]:
        e = entries[t.name]
        level = INFO if t.name == "token_embd.weight" else ERROR
        findings.append(Finding(level, "shape",
                                f"{t.name}: the imatrix has {e.size} values ({e.n_mat}×{e.n_in}), the weight "
                                f"needs {t.n_per_row * t.n_mat} (ne[0] {t.n_per_row} × {t.n_mat} matrices): "
                                "llama-quantize aborts", [t.name]))
    if len(wrong_size) > 3:
        rest_names = [t.name for t in wrong_size[3:]]
        findings.append(Finding(ERROR, "shape", f"{len(rest_names)} more weights whose imatrix sizes do not "
                                f"match: {_short(rest_names)}", rest_names))

    # values llama-quantize rejects, experts with no data
    dead: list[str] = []
    for t in matched:
        e = entries[t.name]
        if e.size != t.n_per_row * t.n_mat:
            continue
        sums2 = np.asarray(e.sums2)
        counts = np.asarray(e.counts, dtype=np.float64)
        if not np.isfinite(sums2).all() or not np.isfinite(counts).all():
            findings.append(Finding(ERROR, "non-finite", f"{t.name}: non-finite values; llama-quantize aborts "
                                    "(collect again)", [t.name]))
            continue
        if e.n_mat > 1 and (counts == 0).any():
            ids = np.flatnonzero(counts == 0).tolist()
            dead.append(f"{t.name} {ids}")
        elif e.n_mat == 1 and counts[0] == 0:
            dead.append(t.name)
    if dead:
        findings.append(Finding(WARNING, "dead-experts",
                                f"{len(dead)} weights have experts that saw no token ({_short(dead, 3)}): "
                                "llama-quantize rounds those with uniform weights; more calibration text (or "
                                "text that reaches them) gives them data", dead))

    ctx = model.context_length
    if ctx and imatrix.chunk_size and imatrix.chunk_size < ctx:
        findings.append(Finding(INFO, "chunk-size",
                                f"collected on chunks of {imatrix.chunk_size} tokens; the model's context is "
                                f"{ctx}: attention inputs of long contexts are not represented"))
    if imatrix.format == "dat":
        findings.append(Finding(INFO, "legacy", "a legacy .dat imatrix has no per-expert counts: experts that "
                                "saw no token cannot be told apart"))
    if not model.is_high_precision():
        findings.append(Finding(WARNING, "quantized-model",
                                "the model's weights are already quantized: llama-quantize needs "
                                "--allow-requantize and the result loses quality; quantize from F32/F16/BF16"))
    return CheckReport(model=str(model.path), imatrix=str(imatrix.path or ""), findings=findings,
                       n_weights=len(weights), n_matched=len(matched))
