"""A model GGUF as a plan sees it: its weights' names, shapes, types and bytes (gguf-py's GGUFReader).

ggml order throughout: ne[0] is the row length (the input channels, what the imatrix has one value
per), ne[1] the rows, ne[2] the experts (or MLA heads). gguf-py shows the data reversed:
(ne[2], ne[1], ne[0]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize

from imatui.errors import FormatError, ImatrixError, NotFoundError
from imatui.plan.qtypes import HIGH_PRECISION, allows_quantization

KEEP_KEYS = ("general.architecture", "general.name", "general.file_type", "general.quantization_version",
             "quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
             "quantize.imatrix.chunks_count")


@dataclass
class ModelTensor:
    name: str
    type: str  # ggml type name, e.g. "F16", "Q4_K"
    ne: tuple[int, ...]
    nbytes: int
    offset: int  # in the file
    _reader: GGUFReader | None = field(default=None, repr=False)
    _index: int = -1

    @property
    def n_per_row(self) -> int:
        return self.ne[0]

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.ne[1:], dtype=np.int64)) if len(self.ne) > 1 else 1

    @property
    def n_mat(self) -> int:
        return self.ne[2] if len(self.ne) > 2 else 1

    @property
    def n_elements(self) -> int:
        return self.n_per_row * self.n_rows

    @property
    def quantizable(self) -> bool:
        n_dims = len(self.ne)  # ggml_n_dims: trailing dimensions of 1 do not count
        while n_dims > 1 and self.ne[n_dims - 1] == 1:
            n_dims -= 1
        return allows_quantization(self.name, n_dims)

    def raw_rows(self) -> np.ndarray:
        """The tensor's bytes (or values) as gguf-py maps them, rows flattened: (n_rows, ...)."""
        if self._reader is None:
            raise ImatrixError(f"{self.name}: no data attached")
        data = self._reader.tensors[self._index].data
        return data.reshape(self.n_rows, -1)

    def rows(self, index: np.ndarray | None = None) -> np.ndarray:
        """Float32 values of the given rows (all by default), shape (len(index), n_per_row)."""
        raw = self.raw_rows()
        if index is not None:
            raw = raw[index]
        qtype = GGMLQuantizationType[self.type]
        if qtype == GGMLQuantizationType.F32:
            return np.asarray(raw, dtype=np.float32).reshape(-1, self.n_per_row)
        if qtype == GGMLQuantizationType.F16:
            return np.asarray(raw).view(np.float16).astype(np.float32).reshape(-1, self.n_per_row)
        return dequantize(np.ascontiguousarray(raw).view(np.uint8), qtype).reshape(-1, self.n_per_row)


@dataclass
class Model:
    path: Path
    architecture: str
    tensors: dict[str, ModelTensor]
    metadata: dict[str, Any]
    data_offset: int  # bytes before the tensor data: header, key-values, tensor infos, padding
    alignment: int
    file_size: int

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def weight_types(self) -> dict[str, int]:
        """How many quantizable weights have each type."""
        out: dict[str, int] = {}
        for t in self.tensors.values():
            if t.quantizable:
                out[t.type] = out.get(t.type, 0) + 1
        return out

    def is_high_precision(self) -> bool:
        return all(t.type in HIGH_PRECISION for t in self.tensors.values() if t.quantizable)


def _field_value(reader: GGUFReader, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        value = f.contents()
    except Exception:  # a field gguf-py cannot render: not one we need
        return None
    return value


def read_model(path: str | Path, *, what: str = "model") -> Model:
    """Open a model GGUF (high-precision or quantized). Raises FormatError when it is not one."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError("no such file", path)
    if path.is_dir():
        raise NotFoundError("is a directory, not a GGUF file", path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise FormatError(f"not a GGUF file (the {what} must be a .gguf that llama.cpp reads)", path)
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # gguf-py raises ValueError/struct errors/IndexError on broken files
        raise FormatError(f"unreadable GGUF ({exc})", path) from None
    arch = _field_value(reader, "general.architecture")
    if not arch:
        kind = _field_value(reader, "general.type")
        hint = " (it is an imatrix file)" if kind == "imatrix" else ""
        raise FormatError(f"not a model GGUF: no general.architecture{hint}", path)
    metadata = {k: _field_value(reader, k) for k in KEEP_KEYS if k in reader.fields}
    for key in (f"{arch}.context_length", f"{arch}.expert_count", f"{arch}.block_count"):
        if key in reader.fields:
            metadata[key] = _field_value(reader, key)
    tensors: dict[str, ModelTensor] = {}
    for i, t in enumerate(reader.tensors):
        ne = tuple(int(n) for n in t.shape)
        tensors[t.name] = ModelTensor(name=t.name, type=t.tensor_type.name, ne=ne, nbytes=int(t.n_bytes),
                                      offset=int(t.data_offset), _reader=reader, _index=i)
    return Model(path=path, architecture=str(arch), tensors=tensors, metadata=metadata,
                 data_offset=int(reader.data_offset), alignment=int(getattr(reader, "alignment", 32)),
                 file_size=os.path.getsize(path))


def read_source_model(path: str | Path) -> Model:
    """The model llama-quantize will read: F32/F16/BF16 weights, else one line saying what to do."""
    model = read_model(path)
    if not model.is_high_precision():
        types = ", ".join(f"{n} {k}" for k, n in sorted(model.weight_types().items()) if k not in HIGH_PRECISION)
        raise FormatError(f"weights are already quantized ({types}); plan from the F32/F16/BF16 GGUF "
                          "that llama-quantize should read", path)
    return model
