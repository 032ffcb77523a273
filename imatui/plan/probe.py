"""Errors per tensor and type: probed with llama-quantize, or estimated with gguf-py, and cached.

With llama-quantize: one `--pure --imatrix` quantization per type writes a probe file; each weight
is read back (the type it really got, after llama-quantize's fallbacks), dequantized with gguf-py
and compared with the source weights. The probe is deleted once measured; the errors are cached in
a JSON file keyed by the model, the imatrix and the quantizer (paths, sizes, modification times),
so planning again at another budget costs nothing.

Without llama-quantize the errors are estimates: gguf-py's reference quantizers (Q4_0, Q4_1, Q5_0,
Q5_1, Q8_0; they ignore the imatrix, so the errors are upper bounds) and an exact F16 rounding.
K and IQ types cannot be estimated that way and are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from imatui.errors import ImatrixError
from imatui.imatrix import Imatrix
from imatui.plan.measure import (SAMPLE_VALUES, error_estimate, error_f16, error_from_probe,
                                 quantizable_weights, take_sample)
from imatui.plan.model import Model, read_model
from imatui.plan.qtypes import DEFAULT_LADDER, GGUF_PY_QUANTIZES, NEEDS_IMATRIX, PROBE_FTYPE

METHOD_VERSION = 1
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class ErrorTable:
    """errors[tensor][type] = (type llama-quantize really wrote, error); header_bytes: the bytes
    before the tensor data of a quantized file of this model (from a probe), when known."""

    source: str  # "llama-quantize" or "gguf-py"
    errors: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    header_bytes: int | None = None
    mixes: dict[str, dict] = field(default_factory=dict)  # --like: file size and types per mix

    def to_json(self) -> dict:
        return {"method": METHOD_VERSION, "source": self.source, "header_bytes": self.header_bytes,
                "errors": {n: {t: list(v) for t, v in d.items()} for n, d in self.errors.items()},
                "mixes": self.mixes}

    @classmethod
    def from_json(cls, data: dict) -> "ErrorTable":
        return cls(source=data["source"], header_bytes=data.get("header_bytes"),
                   errors={n: {t: (v[0], float(v[1])) for t, v in d.items()} for n, d in data["errors"].items()},
                   mixes=data.get("mixes", {}))

    def probed_types(self) -> set[str]:
        return {t for d in self.errors.values() for t in d}


def find_llama_quantize(explicit: str | None) -> Path | None:
    """The llama-quantize to use: --llama-quantize PATH (which must work), else one on PATH."""
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            path = path / "llama-quantize"
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ImatrixError(f"--llama-quantize {explicit}: not an executable file (give the path "
                               "of llama-quantize, or leave the option out to use estimates)")
        return path.resolve()
    found = shutil.which("llama-quantize")
    return Path(found).resolve() if found else None


def _stamp(path: Path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_file(cache_dir: Path, model: Model, imatrix_path: Path, quantizer: Path | None,
               sample_values: int) -> Path:
    key = "|".join([_stamp(model.path), _stamp(imatrix_path),
                    _stamp(quantizer) if quantizer else "gguf-py", str(sample_values), str(METHOD_VERSION)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / f"{model.path.stem}.{digest}.json"


def load_cache(path: Path) -> ErrorTable | None:
    try:
        data = json.loads(path.read_text())
        if data.get("method") != METHOD_VERSION:
            return None
        return ErrorTable.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # no cache, or a broken one: measure again


def save_cache(path: Path, table: ErrorTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(table.to_json(), f)
    os.replace(tmp, path)


def run_quantize(exe: Path, args: list[str], what: str) -> None:
    """Run llama-quantize; a failure becomes one line with the reason it printed."""
    try:
        proc = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace")
    except OSError as exc:
        raise ImatrixError(f"llama-quantize could not start ({exc.strerror or exc}): check --llama-quantize")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("[")]
        reason = next((ln for ln in reversed(lines) if "error" in ln.lower() or "failed" in ln.lower()
                       or "what()" in ln), lines[-1] if lines else f"exit status {proc.returncode}")
        raise ImatrixError(f"llama-quantize failed on {what}: {reason[:300]}")


def _no_data_overrides(model: Model, imatrix: Imatrix, type_name: str, folder: Path) -> Path | None:
    """For a type that refuses to run without data, a --tensor-type-file that sends the weights
    without an imatrix entry to q8_0 (they are not measured for that type), or None."""
    if type_name not in NEEDS_IMATRIX:
        return None
    lines = [f"^{t.name.replace('.', chr(92) + '.')}$=q8_0" for t in quantizable_weights(model)
             if t.name not in imatrix.entries and t.name not in ("token_embd.weight", "output.weight")]
    if not lines:
        return None
    path = folder / f"no-data-{type_name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def probe_type(exe: Path, model: Model, imatrix: Imatrix, imatrix_path: Path, type_name: str,
               folder: Path, sample_values: int) -> tuple[dict[str, tuple[str, float]], int]:
    """Quantize the whole model to one type (--pure) and measure every weight; the probe file is
    removed afterwards. Returns ({tensor: (real type, error)}, bytes before the tensor data)."""
    probe = folder / f"probe-{type_name}.gguf"
    overrides = _no_data_overrides(model, imatrix, type_name, folder)
    args = ["--pure", "--imatrix", str(imatrix_path)]
    if overrides:
        args += ["--tensor-type-file", str(overrides)]
    args += [str(model.path), str(probe), PROBE_FTYPE[type_name]]
    try:
        run_quantize(exe, args, f"the {type_name} probe")
        quant = read_model(probe, what="probe")
        out: dict[str, tuple[str, float]] = {}
        for t in quantizable_weights(model):
            qt = quant.tensors.get(t.name)
            if qt is None:
                continue
            if type_name in NEEDS_IMATRIX and t.name not in imatrix.entries and \
                    t.name not in ("token_embd.weight", "output.weight"):
                continue
            sample = take_sample(t, imatrix, sample_values)
            out[t.name] = error_from_probe(sample, qt)
        return out, quant.data_offset
    finally:
        probe.unlink(missing_ok=True)
        if overrides:
            overrides.unlink(missing_ok=True)


def measure(model: Model, imatrix: Imatrix, imatrix_path: Path, cache_dir: Path, *,
            exe: Path | None, types: tuple[str, ...] = DEFAULT_LADDER,
            sample_values: int = SAMPLE_VALUES, progress: Progress = _quiet) -> tuple[ErrorTable, Path]:
    """The error table for these types, from the cache where it has them."""
    path = cache_file(cache_dir, model, imatrix_path, exe, sample_values)
    table = load_cache(path) or ErrorTable(source="llama-quantize" if exe else "gguf-py")
    weights = quantizable_weights(model)
    changed = False
    if not any("F16" in d for d in table.errors.values()) and weights:
        progress("measuring F16 rounding")
        for t in weights:
            table.errors.setdefault(t.name, {})["F16"] = ("F16", error_f16(take_sample(t, imatrix, sample_values)))
        changed = True
    done = table.probed_types()
    for type_name in types:
        if type_name in done:
            continue
        if exe is not None:
            progress(f"probing {type_name} with llama-quantize")
            cache_dir.mkdir(parents=True, exist_ok=True)
            results, header = probe_type(exe, model, imatrix, imatrix_path, type_name, cache_dir, sample_values)
            table.header_bytes = header
        else:
            if type_name not in GGUF_PY_QUANTIZES:
                continue
            progress(f"estimating {type_name} with gguf-py")
            results = {}
            for t in weights:
                est = error_estimate(take_sample(t, imatrix, sample_values), t, type_name)
                if est is not None:
                    results[t.name] = est
        for name, value in results.items():
            table.errors.setdefault(name, {})[type_name] = value
        changed = True
        save_cache(path, table)  # each probe is kept as soon as it is measured
    if changed:
        save_cache(path, table)
    return table, path


def mix_of(exe: Path, model: Model, imatrix_path: Path, mix: str, cache_dir: Path,
           table: ErrorTable, cache_path: Path) -> dict:
    """llama-quantize's own mix for this model: {"file_size": bytes, "types": {tensor: type}};
    quantized once for real and cached."""
    if mix in table.mixes:
        return table.mixes[mix]
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"mix-{mix}.gguf"
    try:
        run_quantize(exe, ["--imatrix", str(imatrix_path), str(model.path), str(out), mix], f"the {mix} mix")
        quant = read_model(out, what="mix")
        result = {"file_size": quant.file_size, "header_bytes": quant.data_offset,
                  "types": {n: t.type for n, t in quant.tensors.items()}}
    finally:
        out.unlink(missing_ok=True)
    table.mixes[mix] = result
    save_cache(cache_path, table)
    return result


__all__ = ["ErrorTable", "find_llama_quantize", "measure", "mix_of"]
