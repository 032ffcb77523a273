"""Recipes as llama-quantize and ik_llama.cpp read them, written atomically; recipes read back.

llama-quantize --tensor-type-file: whitespace-separated NAME=TYPE tokens (no comments), NAME
lower-cased and used as a std::regex with regex_search, the first match winning. So the lines go
longest name first (a name can only regex-match a name at least as long), and any line that would
still catch another weight first is written escaped and anchored (^blk\\.0\\.ffn_up\\.weight$).
ik_llama.cpp --custom-q: comma-separated REGEX=TYPE rules, first match wins; written anchored.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from imatui.formats.write import check_target
from imatui.plan.model import Model
from imatui.plan.qtypes import ggml_name

IMATRIX_KEYS = ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                "quantize.imatrix.chunks_count")


def _anchored(name: str) -> str:
    return "^" + re.escape(name) + "$"


def tensor_type_lines(types: dict[str, str], weights: list[str]) -> list[str]:
    """NAME=type lines for --tensor-type-file; every weight in `weights` meets its own line first."""
    names = sorted(types, key=lambda n: (-len(n), n))
    patterns = {n: n.lower() for n in names}
    compiled = {n: re.compile(p) for n, p in patterns.items()}

    def first_match(target: str) -> str | None:
        for n in names:
            if compiled[n].search(target):
                return n
        return None

    for _ in range(len(names) + 1):
        wrong = [w for w in weights if w in types and first_match(w) != w]
        wrong += [w for w in weights if w not in types and first_match(w) is not None]
        if not wrong:
            break
        for w in wrong:
            culprit = first_match(w)
            if culprit is not None and culprit != w:
                patterns[culprit] = _anchored(culprit)
                compiled[culprit] = re.compile(patterns[culprit])
    return [f"{patterns[n]}={ggml_name(types[n])}" for n in names]


def custom_q_rules(types: dict[str, str]) -> list[str]:
    """ik_llama.cpp --custom-q rules, one per weight, anchored."""
    return [f"{_anchored(n)}={ggml_name(t)}" for n, t in sorted(types.items())]


def write_text_atomic(path: str | Path, text: str, *, force: bool = False) -> Path:
    """The file appears complete or not at all; an existing file is replaced only with force."""
    path = Path(path)
    folder = check_target(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def recipe_of(model: Model) -> dict[str, str]:
    """The type of every weight llama-quantize decides on, as the file holds it."""
    return {t.name: t.type for t in model.tensors.values() if t.quantizable}


def imatrix_keys(model: Model) -> dict[str, object]:
    return {k: model.metadata[k] for k in IMATRIX_KEYS if k in model.metadata}


def dominant_ftype(types: dict[str, str], model: Model) -> str:
    """The ftype argument for llama-quantize: the type holding most weights (it sets general.file_type;
    every weight is named in the recipe, so it chooses nothing else)."""
    from imatui.plan.qtypes import PROBE_FTYPE

    weight: dict[str, int] = {}
    for name, t in types.items():
        weight[t] = weight.get(t, 0) + model.tensors[name].n_elements
    for t, _ in sorted(weight.items(), key=lambda kv: -kv[1]):
        if t in PROBE_FTYPE:
            return PROBE_FTYPE[t]
    return "Q8_0"


def type_diff(a: Model, b: Model) -> list[tuple[str, str | None, str | None]]:
    """(name, type in a, type in b) for every tensor whose type differs or that one model lacks."""
    names = list(a.tensors) + [n for n in b.tensors if n not in a.tensors]
    out = []
    for n in names:
        ta = a.tensors[n].type if n in a.tensors else None
        tb = b.tensors[n].type if n in b.tensors else None
        if ta != tb:
            out.append((n, ta, tb))
    return out
