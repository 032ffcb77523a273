"""Operations on whole imatrix files: merge (as llama-imatrix --in-file A --in-file B does)."""

from __future__ import annotations

import numpy as np

from imatui.errors import ImatrixError
from imatui.imatrix import Entry, Imatrix


def merge(imatrices: list[Imatrix]) -> Imatrix:
    """Sums and counts add, datasets concatenate, in the order given (llama.cpp's load_imatrix rules).

    A single count broadcasts over experts (an older file of a MoE tensor); any other shape
    difference is an error naming the tensor and both files.
    """
    if not imatrices:
        raise ImatrixError("nothing to merge")
    chunk_size = next((m.chunk_size for m in imatrices if m.chunk_size), 512)
    sums2: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray | None] = {}
    counts: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    datasets: list[str] = []
    metadata: dict = {}
    for m in imatrices:
        src = str(m.path) if m.path else "input"
        datasets.extend(m.datasets)
        for k, v in m.metadata.items():
            metadata.setdefault(k, v)
        for name, e in m.entries.items():
            s2 = np.asarray(e.sums2, dtype=np.float32).reshape(-1)
            if name not in sums2:
                sums2[name] = s2.copy()
                sums[name] = None if e.sums is None else np.asarray(e.sums, dtype=np.float32).reshape(-1).copy()
                counts[name] = np.array(e.counts, dtype=np.float64)
                origin[name] = src
                continue
            if s2.size != sums2[name].size:
                raise ImatrixError(f"cannot merge {name}: {sums2[name].size} values in {origin[name]} "
                                   f"but {s2.size} in {src}")
            c_old, c_new = counts[name], np.asarray(e.counts, dtype=np.float64)
            if c_old.size == 1 and c_new.size > 1:
                c_old = np.full(c_new.size, c_old[0])
            elif c_new.size == 1 and c_old.size > 1:
                c_new = np.full(c_old.size, c_new[0])
            elif c_old.size != c_new.size:
                raise ImatrixError(f"cannot merge {name}: {c_old.size} matrices in {origin[name]} "
                                   f"but {c_new.size} in {src}")
            sums2[name] += s2
            counts[name] = c_old + c_new
            if sums[name] is not None and e.sums is not None:
                sums[name] += np.asarray(e.sums, dtype=np.float32).reshape(-1)
            else:
                sums[name] = None  # a file without in_sum makes the merged sums meaningless
    entries = {}
    for name in sorted(sums2):
        c = counts[name]
        n_mat = c.size
        shape = (n_mat, sums2[name].size // n_mat)
        s = sums[name]
        entries[name] = Entry(name=name, shape=shape, counts=c, _sums2=sums2[name].reshape(shape),
                              _sums=None if s is None else s.reshape(shape))
    max_count = max((float(c.max()) for c in counts.values()), default=0.0)
    return Imatrix(entries=entries, datasets=datasets, chunk_count=int(max_count // chunk_size),
                   chunk_size=chunk_size, path=None, format="gguf", metadata=metadata)
