"""llama.cpp's legacy binary imatrix format (.dat). No magic number: every length is validated.

Layout, little endian: int32 n_entries; per entry int32 name_len, name bytes, int32 ncall, int32 nval,
float32 values[nval] = (in_sum2 / count) * ncall; then optionally int32 chunk_count, int32 len and
the dataset name. llama.cpp loads values * chunk_size as sums and ncall * chunk_size as the count
(chunk_size is not stored: its -c, 512 by default); per-expert counts are lost, so every entry
loads as one matrix of nval channels. We follow that rule so statistics agree across formats.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from imatui.errors import CorruptError, FormatError, TruncatedError
from imatui.imatrix import Entry, Imatrix

DEFAULT_CHUNK_SIZE = 512
_MAX_NAME = 4096


def read_legacy(path: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Imatrix:
    path = Path(path)
    data = path.read_bytes()
    size = len(data)
    if size < 4:
        raise FormatError("not an imatrix: too short for GGUF or the legacy format", path)

    def int32(pos: int, what: str) -> int:
        if pos + 4 > size:
            raise TruncatedError(f"the file ends inside {what}", path)
        return struct.unpack_from("<i", data, pos)[0]

    n_entries = int32(0, "the entry count")
    # a legacy file needs at least 16 bytes per entry: this rejects most non-imatrix files at once
    if n_entries < 1 or 4 + 16 * n_entries > size:
        raise FormatError("not an imatrix: neither GGUF nor a legacy .dat file", path)
    pos = 4
    entries: dict[str, Entry] = {}
    max_count = 0.0
    for i in range(n_entries):
        name_len = int32(pos, f"the name length of entry {i + 1}")
        pos += 4
        if name_len < 1 or name_len > _MAX_NAME:
            raise FormatError(f"not an imatrix: entry {i + 1} has a name length of {name_len}", path)
        if pos + name_len > size:
            raise TruncatedError(f"the file ends inside the name of entry {i + 1}", path)
        raw_name = data[pos : pos + name_len]
        pos += name_len
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"not an imatrix: entry {i + 1} has a name that is not text", path) from None
        if not name.isprintable():
            raise FormatError(f"not an imatrix: entry {i + 1} has a name that is not text", path)
        ncall = int32(pos, f"the call count of {name}")
        nval = int32(pos + 4, f"the value count of {name}")
        pos += 8
        if nval < 1:
            raise CorruptError(f"entry {name} has {nval} values", path)
        if ncall < 0:
            raise CorruptError(f"entry {name} has a negative call count ({ncall})", path)
        if pos + 4 * nval > size:
            raise TruncatedError(f"the file ends inside the values of {name}", path)
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos)
        pos += 4 * nval
        with np.errstate(over="ignore", invalid="ignore"):  # a huge value becomes Inf: the statistics say so
            sums2 = (values * np.float32(chunk_size)).astype(np.float32).reshape(1, nval)
        counts = np.array([float(ncall) * chunk_size])
        if name in entries:  # llama.cpp adds repeated entries
            old = entries[name]
            if old.size != nval:
                raise CorruptError(f"entry {name} appears twice with different sizes", path)
            sums2 = old.sums2 + sums2
            counts = old.counts + counts
        entries[name] = Entry(name=name, shape=(1, nval), counts=counts, _sums2=sums2)
        max_count = max(max_count, float(counts.max()))

    datasets: list[str] = []
    chunk_count = int(max_count // chunk_size) if chunk_size > 0 else 0
    # optional trailer: int32 chunk count, int32 length, dataset name
    if pos + 4 <= size:
        pos += 4  # llama.cpp ignores the stored call count and recomputes it from the counts
        if pos + 4 <= size:
            n = struct.unpack_from("<i", data, pos)[0]
            pos += 4
            if 0 <= n <= size - pos:
                datasets.append(data[pos : pos + n].decode("utf-8", errors="replace"))
                pos += n
            elif n > size - pos:
                raise TruncatedError("the file ends inside the dataset name at its end", path)
    if pos != size:
        raise FormatError(f"not a legacy imatrix: {size - pos} unexpected bytes after the last entry", path)
    return Imatrix(
        entries=dict(sorted(entries.items())),
        datasets=datasets,
        chunk_count=chunk_count,
        chunk_size=chunk_size,
        path=path,
        format="dat",
    )


def write_legacy(imatrix: Imatrix, path: str | Path) -> None:
    """Write as llama-imatrix --output-format dat: values are means x ncall, sorted names.

    Entries whose every matrix has a zero count are skipped (llama.cpp does the same: the legacy
    format cannot say "no data"); a zero-count expert of a partial entry is stored as 1 like llama.cpp.
    """
    chunk_size = imatrix.chunk_size or DEFAULT_CHUNK_SIZE
    out = bytearray()
    names = [n for n in sorted(imatrix.entries) if np.any(imatrix.entries[n].counts > 0)]
    out += struct.pack("<i", len(names))
    for name in names:
        e = imatrix.entries[name]
        raw = name.encode("utf-8")
        out += struct.pack("<i", len(raw)) + raw
        ncall = int((int(e.counts.max()) + chunk_size - 1) // chunk_size)
        out += struct.pack("<ii", ncall, e.size)
        sums2 = np.asarray(e.sums2, dtype=np.float32)
        counts = e.counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(counts > 0, sums2 / np.where(counts > 0, counts, 1), np.float32(1.0))
        values = (values.astype(np.float32) * np.float32(ncall)).astype("<f4")
        out += values.tobytes()
    out += struct.pack("<i", int(imatrix.chunk_count))
    dataset = (imatrix.datasets[-1] if imatrix.datasets else "").encode("utf-8")
    out += struct.pack("<i", len(dataset)) + dataset
    Path(path).write_bytes(bytes(out))
