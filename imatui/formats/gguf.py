"""llama.cpp's GGUF imatrix format, through gguf-py (GGUFReader / GGUFWriter).

Layout written by llama-imatrix: general.type = "imatrix", imatrix.datasets (string array),
imatrix.chunk_count and imatrix.chunk_size (u32), no general.architecture; per weight, in sorted
name order, F32 NAME.in_sum2 (ne [n_in, n_mat], 1-D for a dense tensor), F32 NAME.counts (ne [1, n_mat],
tokens per matrix stored as float) and, from newer collectors, F32 NAME.in_sum (signed sums).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from imatui.errors import CorruptError, FormatError, ImatrixError, TruncatedError
from imatui.imatrix import Entry, Imatrix

GGUF_MAGIC = b"GGUF"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
# written true by `imatui collect` on its final save (false on every checkpoint before): the live view
# can then say "finished" instead of guessing from silence; llama.cpp ignores keys it does not know
KEY_FINISHED = "imatui.collect.finished"
SUFFIXES = (".in_sum2", ".counts", ".in_sum")
# keys gguf-py reports for every file; not metadata of ours
_READER_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


class _FileSlice:
    """Reads one tensor's bytes on demand, refusing if the file changed since its header was read.

    Reading per tensor (instead of keeping the whole file memory-mapped) keeps the resident set
    small on multi-GB files, and the stat check turns a file rewritten under us into an error
    instead of a silently wrong number.
    """

    __slots__ = ("path", "offset", "count", "shape", "stamp")

    def __init__(self, path: Path, offset: int, count: int, shape: tuple[int, ...], stamp: tuple[int, int]):
        self.path, self.offset, self.count, self.shape, self.stamp = path, offset, count, shape, stamp

    def __call__(self) -> np.ndarray:
        nbytes = self.count * 4
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_size, st.st_mtime_ns) != self.stamp:
                    raise TruncatedError("the file changed while it was being read (is it being rewritten?)",
                                         self.path)
                buf = os.pread(f.fileno(), nbytes, self.offset)
        except FileNotFoundError:
            raise TruncatedError("the file disappeared while it was being read", self.path) from None
        if len(buf) != nbytes:
            raise TruncatedError("the file ends inside its tensor data", self.path)
        return np.frombuffer(buf, dtype="<f4").reshape(self.shape)


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


_HEADER_PREFIX = 1 << 20  # the first copy of a header (an imatrix header is ~100 bytes a tensor)
_HEADER_COPY_MAX = 256 << 20  # past this a header that still does not parse is parsed in place


def _check_unchanged(fd: int, stamp: tuple[int, int], path: Path) -> None:
    st = os.fstat(fd)
    if (st.st_size, st.st_mtime_ns) != stamp:
        raise TruncatedError("the file changed while it was being read (is it being rewritten?)", path)


def _header_reader(path: Path, size: int, stamp: tuple[int, int]):
    """gguf-py's GGUFReader over a private copy of the file's header.

    GGUFReader memory-maps the file it parses, and a writer that truncates the file under the map
    (llama-imatrix rewrites in place) would kill the process with SIGBUS instead of raising. So the
    first bytes are read with pread and parsed from a sparse in-memory file of the same size (the
    tensor data there is a hole, never read: data is read from the real file, stamp-checked). When
    the header turns out longer than the copy, a longer copy is parsed again. A copy that does not
    parse at all (a damaged header, or one whose rest, zeros in the copy, reads as duplicate empty
    names) is parsed in place instead, once: that parse says which it was.
    """
    from gguf import GGUFReader

    if not hasattr(os, "memfd_create"):
        return GGUFReader(path, "r")
    prefix = min(size, _HEADER_PREFIX)
    while True:
        if prefix > _HEADER_COPY_MAX:  # a header this long is not an imatrix's: parse it in place
            return GGUFReader(path, "r")
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(fd, prefix, 0)
            _check_unchanged(fd, stamp, path)
        finally:
            os.close(fd)
        if len(head) != prefix:
            raise TruncatedError("the file changed while it was being read (is it being rewritten?)", path)
        if prefix == min(size, _HEADER_PREFIX):
            refuse_model(head, path)
        mem = os.memfd_create("imatui-gguf-header", 0)
        try:
            view = memoryview(head)
            while view:
                view = view[os.write(mem, view):]
            os.ftruncate(mem, size)
            try:
                reader = GGUFReader(f"/proc/self/fd/{mem}", "r")
            except Exception:  # noqa: BLE001
                if prefix >= size:
                    raise
                # damage, or a header longer than the copy (its zeros read as empty names): gguf-py
                # on the file itself tells which (a longer header parses, damage raises)
                reader = None
        finally:
            os.close(mem)  # the reader's map keeps the copy alive
        if reader is None:
            return GGUFReader(path, "r")
        if reader.data_offset <= prefix or prefix >= size:
            return reader
        prefix = min(size, prefix * 4)


def refuse_model(head: bytes, path: Path) -> None:
    """A GGUF model is turned away by its first bytes: gguf-py parses a tokenizer of 100k+ strings one
    by one, for nothing. An imatrix has no general.architecture, a model no imatrix keys or in_sum2
    (a model quantized with an imatrix has quantize.imatrix.file, .dataset, .chunks_count: others)."""
    key = b"general.architecture"
    at = head.find(key)
    if at < 0 or any(k in head for k in (b"imatrix.chunk_count", b"imatrix.datasets", b".in_sum2")):
        return
    arch = "unknown architecture"
    try:
        vtype, length = struct.unpack_from("<IQ", head, at + len(key))
        if vtype == 8 and length < 256:  # GGUF string
            start = at + len(key) + 12
            arch = head[start : start + length].decode("utf-8", "replace") or arch
    except struct.error:
        pass
    raise FormatError(f"this is a GGUF model ({arch}), not an imatrix", path)


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 - gguf-py raises assorted errors on odd fields
        return None


def read_gguf(path: str | Path, *, lazy: bool = True) -> Imatrix:
    """Parse a GGUF imatrix. Raises FormatError (not an imatrix) or TruncatedError/CorruptError."""
    from gguf import GGMLQuantizationType

    path = Path(path)
    stamp = _stamp(path)
    size = stamp[0]
    try:
        reader = _header_reader(path, size, stamp)
    except ImatrixError:
        raise
    except Exception as exc:  # noqa: BLE001 - gguf-py raises ValueError, struct errors, IndexError...
        if size < 24:
            raise TruncatedError("the GGUF header is incomplete (the file is too short)", path) from None
        msg = str(exc) or type(exc).__name__
        # gguf-py slices its memory map past the end of a short file and fails to reshape the slice
        if "offset" in msg or "beyond" in msg or "out of" in msg or "too" in msg or "reshape" in msg or isinstance(
            exc, (IndexError, OverflowError)
        ):
            raise TruncatedError(f"the GGUF file is truncated or damaged ({msg})", path) from None
        if "version" in msg:
            raise FormatError(f"cannot parse GGUF ({msg})", path) from None
        # any other failure of gguf-py's parser on a file with the GGUF magic: a damaged header (a
        # short file makes numpy reinterpret a slice of the wrong size, "changing to a larger dtype")
        raise TruncatedError(f"the GGUF header is truncated or damaged ({msg})", path) from None

    fields = reader.fields
    gtype = _field_value(fields["general.type"]) if "general.type" in fields else None
    tensor_names = [t.name for t in reader.tensors]
    has_sums2 = any(n.endswith(".in_sum2") for n in tensor_names)
    if not has_sums2:
        if "general.architecture" in fields:
            arch = _field_value(fields["general.architecture"])
            raise FormatError(f"this is a GGUF model ({arch}), not an imatrix", path)
        if gtype and gtype != "imatrix":
            raise FormatError(f"this GGUF is a {gtype!r}, not an imatrix", path)
        raise FormatError("this GGUF holds no .in_sum2 tensors: not an imatrix", path)

    datasets = _field_value(fields[KEY_DATASETS]) if KEY_DATASETS in fields else []
    if isinstance(datasets, str):
        datasets = [datasets]
    chunk_count = _field_value(fields[KEY_CHUNK_COUNT]) if KEY_CHUNK_COUNT in fields else None
    chunk_size = _field_value(fields[KEY_CHUNK_SIZE]) if KEY_CHUNK_SIZE in fields else None
    for key, value in ((KEY_CHUNK_COUNT, chunk_count), (KEY_CHUNK_SIZE, chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or not 0 <= int(value) < 2**32):
            raise CorruptError(f"{key} is {value!r}, not a chunk number", path)
    if datasets is not None and (not isinstance(datasets, list)
                                 or not all(isinstance(d, str) for d in datasets)):
        raise CorruptError(f"{KEY_DATASETS} is not a list of names", path)
    metadata: dict[str, Any] = {}
    for key, field in fields.items():
        if key in _READER_KEYS or key in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE, "general.type"):
            continue
        metadata[key] = _field_value(field)
    missing = [k for k, v in ((KEY_DATASETS, datasets), (KEY_CHUNK_COUNT, chunk_count),
                              (KEY_CHUNK_SIZE, chunk_size)) if v is None]
    if missing:
        metadata["imatui.missing_keys"] = missing  # llama-quantize would reject this file

    parts: dict[str, dict[str, Any]] = {}
    for t in reader.tensors:
        for suffix in SUFFIXES:
            if t.name.endswith(suffix):
                base = t.name[: -len(suffix)]
                break
        else:
            continue  # mainline ignores unknown suffixes (.stats from PR #14891), so do we
        if t.tensor_type != GGMLQuantizationType.F32:
            raise CorruptError(f"tensor {t.name} is {t.tensor_type.name}, expected F32", path)
        n = int(t.n_elements)
        if t.data_offset + 4 * n > size:
            raise TruncatedError(f"the file ends inside tensor {t.name}", path)
        ne = [int(x) for x in t.shape]  # ggml order: ne[0] = n_in
        parts.setdefault(base, {})[suffix] = (t, n, ne)

    entries: dict[str, Entry] = {}
    # counts are read with pread, not through the reader's memory map: a page fault there maps a whole
    # large folio of the page cache into the process (hundreds of MB of resident set for a 1 GB file)
    fd = os.open(path, os.O_RDONLY)
    try:
        for name in sorted(parts):
            entries[name] = _entry(name, parts[name], path, stamp, fd, lazy)
        _check_unchanged(fd, stamp, path)
    finally:
        os.close(fd)
    del reader  # drop the memory map: data is read per tensor from here on
    return Imatrix(
        entries=entries,
        datasets=[str(d) for d in (datasets or [])],
        chunk_count=int(chunk_count or 0),
        chunk_size=int(chunk_size or 0),
        path=path,
        format="gguf",
        metadata=metadata,
    )


def _entry(name: str, p: dict[str, Any], path: Path, stamp: tuple[int, int], fd: int, lazy: bool) -> Entry:
    """One weight's Entry: shapes checked, counts read (pread), sums2/sums lazy or read now."""
    if ".in_sum2" not in p or ".counts" not in p:
        missing_part = "counts" if ".counts" not in p else "in_sum2"
        raise CorruptError(f"tensor {name} has no {missing_part}", path)
    t2, n2, ne2 = p[".in_sum2"]
    tc, nc, _ = p[".counts"]
    if nc < 1 or n2 % nc != 0:
        raise CorruptError(f"tensor {name}: in_sum2 has {n2} values, not a multiple of its {nc} counts",
                           path)
    n_mat = nc
    n_in = n2 // nc
    if n_in == 0:  # llama-imatrix divides by the row width; so would every statistic
        raise CorruptError(f"tensor {name}: in_sum2 has no values ({n_mat} row(s) of width 0)", path)
    if ne2 and len(ne2) >= 2 and ne2[0] != n_in:
        raise CorruptError(f"tensor {name}: in_sum2 rows are {ne2[0]} wide, but {n2} values over {nc} counts "
                           f"make {n_in}", path)
    rows = int(np.prod(ne2[1:])) if len(ne2) >= 2 else 1  # a 1-D in_sum2 is one matrix
    if rows != n_mat:
        raise CorruptError(f"tensor {name}: in_sum2 has {rows} rows but {nc} counts",
                           path)
    raw = os.pread(fd, 4 * nc, int(tc.data_offset))
    if len(raw) != 4 * nc:
        _check_unchanged(fd, stamp, path)  # a writer started over: say so, not "truncated"
        raise TruncatedError(f"the file ends inside tensor {name}.counts", path)
    counts = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise CorruptError(f"tensor {name}: counts are negative or not finite ({counts[:4]}...)", path)
    counts = np.rint(counts)  # llama.cpp lround()s the stored floats
    shape = (n_mat, n_in)
    sums2: Any = _FileSlice(path, int(t2.data_offset), n2, shape, stamp)
    sums: Any = None
    if ".in_sum" in p:
        ts, ns, _ = p[".in_sum"]
        if ns != n2:
            raise CorruptError(f"tensor {name}: in_sum has {ns} values but in_sum2 has {n2}", path)
        sums = _FileSlice(path, int(ts.data_offset), ns, shape, stamp)
    if not lazy:
        sums2 = np.array(sums2(), dtype=np.float32)
        sums = None if sums is None else np.array(sums(), dtype=np.float32)
    return Entry(name=name, shape=shape, counts=counts, _sums2=sums2, _sums=sums)


def _add_metadata(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int64(key, value) if abs(value) >= 2**31 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)) and value:
        writer.add_array(key, list(value))


def write_gguf(imatrix: Imatrix, path: str | Path) -> None:
    """Write `imatrix` as llama-imatrix does (same keys, names, shapes, dtypes, order), streaming.

    Writes to `path` directly; callers wanting atomicity write to a temporary name and rename
    (imatui.formats.write.save does).
    """
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch="")
    # llama-imatrix writes no general.architecture; GGUFWriter adds one in its constructor
    writer.kv_data[0].pop("general.architecture", None)
    writer.add_type("imatrix")
    writer.add_array(KEY_DATASETS, [str(d) for d in imatrix.datasets])
    writer.add_uint32(KEY_CHUNK_COUNT, int(imatrix.chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(imatrix.chunk_size))
    for key, value in imatrix.metadata.items():
        if key.startswith("imatui.") and key != "imatui.missing_keys":
            _add_metadata(writer, key, value)

    order: list[tuple[str, str]] = []
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        # dense tensors are 1-D in llama's files (ggml drops trailing dims of 1)
        shape2 = (e.n_in,) if e.n_mat == 1 else (e.n_mat, e.n_in)
        shapec = (1,) if e.n_mat == 1 else (e.n_mat, 1)
        writer.add_tensor_info(f"{name}.in_sum2", shape2, np.dtype(np.float32), 4 * e.size)
        writer.add_tensor_info(f"{name}.counts", shapec, np.dtype(np.float32), 4 * e.n_mat)
        order += [(name, "in_sum2"), (name, "counts")]
        if e.has_sums:
            writer.add_tensor_info(f"{name}.in_sum", shape2, np.dtype(np.float32), 4 * e.size)
            order.append((name, "in_sum"))

    writer.write_header_to_file(path=Path(path))
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, part in order:
        e = imatrix.entries[name]
        if part == "in_sum2":
            arr = e.sums2
        elif part == "counts":
            arr = e.counts
        else:
            arr = e.sums
        writer.write_tensor_data(np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))
    writer.close()
