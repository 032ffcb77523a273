"""The one model type between every layer: an imatrix in memory.

Arrays may be lazy: a reader hands each Entry a loader, so a 1 GB file is never held in RAM at once.
Statistics are computed from this type by pure functions in imatui.stats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

_BLK = re.compile(r"(?:^|\.)blk\.(\d+)\.")

ArrayLoader = Callable[[], np.ndarray]


def split_name(name: str) -> tuple[int | None, str]:
    """(layer, kind) as llama-imatrix prints them: blk.3.attn_k.weight -> (3, "attn_k").

    The kind is the part before ".weight" (the whole name when there is none), the layer the number
    after "blk" (None for output.weight and other tensors outside the blocks).
    """
    parts = name.split(".")
    layer: int | None = None
    for i, part in enumerate(parts):
        if part == "blk" and i + 1 < len(parts):
            try:
                layer = int(parts[i + 1])
            except ValueError:
                layer = None
            break
    kind = name
    for i, part in enumerate(parts):
        if part == "weight" and i > 0:
            kind = parts[i - 1]
            break
    return layer, kind


def previous_layer_name(name: str) -> str | None:
    """The same tensor one block up (blk.N-1), as llama.cpp's CosSim looks for it."""
    m = _BLK.search(name)
    if not m:
        return None
    blk = int(m.group(1))
    return name[: m.start(1)] + str(blk - 1) + name[m.end(1) :]


@dataclass
class Entry:
    """One weight's statistics: sums of squared inputs per channel and tokens per matrix.

    sums2 has shape (n_mat, n_in): one row per matrix (one per expert for MoE tensors).
    counts has shape (n_mat,): tokens that went through each matrix (0 for an expert never hit).
    sums (signed input sums, same shape as sums2) exists when the collector wrote in_sum.
    """

    name: str
    shape: tuple[int, int]
    counts: np.ndarray
    _sums2: np.ndarray | ArrayLoader = field(repr=False)
    _sums: np.ndarray | ArrayLoader | None = field(default=None, repr=False)

    @property
    def n_mat(self) -> int:
        return self.shape[0]

    @property
    def n_in(self) -> int:
        return self.shape[1]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def layer(self) -> int | None:
        return split_name(self.name)[0]

    @property
    def kind(self) -> str:
        return split_name(self.name)[1]

    @property
    def has_sums(self) -> bool:
        return self._sums is not None

    @property
    def sums2(self) -> np.ndarray:
        """float32 (n_mat, n_in); read from disk on each access when the entry is lazy."""
        value = self._sums2
        return value() if callable(value) else value

    @property
    def sums(self) -> np.ndarray | None:
        value = self._sums
        if value is None:
            return None
        return value() if callable(value) else value

    def mean_importance(self, live: np.ndarray | None = None) -> np.ndarray:
        """Per-channel means sums2 / counts (the values llama's statistics run on), float64, flat over
        the given matrices (default: those with a count above 0; the rest never saw a token)."""
        counts = np.asarray(self.counts, dtype=np.float64)
        if live is None:
            live = counts > 0
        sums2 = np.asarray(self.sums2)
        rows = sums2 if np.all(live) else sums2[live]
        return (rows.astype(np.float64) / counts[live][:, None]).reshape(-1)

    def materialize(self) -> "Entry":
        """An eager copy, safe to keep after the source file changes or is closed."""
        sums = self.sums
        return Entry(
            name=self.name,
            shape=self.shape,
            counts=np.array(self.counts, dtype=np.float64),
            _sums2=np.array(self.sums2, dtype=np.float32),
            _sums=None if sums is None else np.array(sums, dtype=np.float32),
        )

    @classmethod
    def from_arrays(
        cls, name: str, sums2: np.ndarray, counts: np.ndarray, sums: np.ndarray | None = None
    ) -> "Entry":
        sums2 = np.asarray(sums2, dtype=np.float32)
        if sums2.ndim == 1:
            sums2 = sums2.reshape(1, -1)
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if sums is not None:
            sums = np.asarray(sums, dtype=np.float32).reshape(sums2.shape)
        return cls(name=name, shape=(int(sums2.shape[0]), int(sums2.shape[1])), counts=counts,
                   _sums2=sums2, _sums=sums)


@dataclass
class Imatrix:
    """A whole imatrix file: entries in sorted name order plus llama-imatrix's metadata."""

    entries: dict[str, Entry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 512
    path: Path | None = None
    format: str = "gguf"  # "gguf" or "dat": what the file on disk was
    metadata: dict[str, Any] = field(default_factory=dict)  # other keys (imatui.*), kept on write

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def __getitem__(self, name: str) -> Entry:
        return self.entries[name]

    @property
    def has_sums(self) -> bool:
        return any(e.has_sums for e in self.entries.values())

    def materialize(self) -> "Imatrix":
        return Imatrix(
            entries={k: e.materialize() for k, e in self.entries.items()},
            datasets=list(self.datasets),
            chunk_count=self.chunk_count,
            chunk_size=self.chunk_size,
            path=self.path,
            format=self.format,
            metadata=dict(self.metadata),
        )
