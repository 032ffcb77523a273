"""Small model GGUFs for the plan tests, written with gguf-py.

`slim_copy` made tests/fixtures/moe/*-slim-f16.gguf from ../shared/fixtures/moe (run this file):
the same tensors and shapes but token_embd cut to its first 256 rows and no tokenizer keys, so the
blocks (MoE experts, MLA heads) are byte for byte the ones the fixture imatrix files were collected
on, at a fraction of the size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import quantize


def slim_copy(src: Path, dst: Path, vocab_rows: int = 256) -> None:
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
            continue
        vtype = GGUFValueType(f.types[0])
        if vtype == GGUFValueType.ARRAY:
            continue
        w.add_key_value(key, f.contents(), vtype)
    for t in r.tensors:
        data = np.array(t.data)
        if t.name == "token_embd.weight":
            data = data[:vocab_rows]
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_model(path: Path, tensors: dict[str, np.ndarray], *, arch: str = "llama",
                types: dict[str, str] | None = None, extra: dict[str, object] | None = None,
                context_length: int = 2048) -> Path:
    """A model GGUF: float arrays (gguf-py order, rows last) stored as F32, F16 or quantized by
    gguf-py (types[name] = "Q8_0" ...)."""
    w = GGUFWriter(path, arch)
    w.add_context_length(context_length)
    for key, value in (extra or {}).items():
        if isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, str(value))
    for name, arr in tensors.items():
        kind = (types or {}).get(name, "F32")
        if kind == "F32":
            w.add_tensor(name, arr.astype(np.float32))
        elif kind == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            q = quantize(arr.astype(np.float32), T[kind])
            w.add_tensor(name, q, raw_dtype=T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    shared = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "moe"
    here = Path(__file__).parent / "fixtures" / "moe"
    for name in ("qwen3moe-tiny", "deepseekv3-tiny"):
        slim_copy(shared / f"{name}-f16.gguf", here / f"{name}-slim-f16.gguf")
