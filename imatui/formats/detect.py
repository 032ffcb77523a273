"""Find out what a file is by its bytes, never by its name, and load it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from imatui import forked
from imatui.errors import FormatError, ImatrixError, NotFoundError
from imatui.formats.gguf import GGUF_MAGIC, read_gguf, refuse_model
from imatui.formats.legacy import DEFAULT_CHUNK_SIZE, read_legacy
from imatui.imatrix import Imatrix


_SNIFF_BYTES = 1 << 20


def _check_path(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError("no such file", path) from None
    except PermissionError:
        raise NotFoundError("permission denied", path) from None
    if os.path.isdir(path):
        raise NotFoundError("is a directory, not an imatrix file", path)
    if st.st_size == 0:
        raise FormatError("the file is empty", path)
    return st.st_size


def detect_format(path: str | Path) -> str:
    """"gguf" when the file starts with the GGUF magic, otherwise "dat" (llama.cpp's own order)."""
    path = Path(path)
    _check_path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    return "gguf" if head == GGUF_MAGIC else "dat"


def load(path: str | Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE, lazy: bool = True) -> Imatrix:
    """Load any imatrix file. Raises an ImatrixError subclass with a message naming the problem."""
    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "gguf":
            return read_gguf(path, lazy=lazy)
        return read_legacy(path, chunk_size=chunk_size)
    except ImatrixError:
        raise
    except (OSError, MemoryError) as exc:
        raise ImatrixError(f"cannot read: {exc}", path) from None
    except Exception as exc:  # noqa: BLE001 - a parser bug must still reach the user as one line
        raise FormatError(f"cannot parse: {type(exc).__name__}: {exc}", path) from None


def load_pair(a: str | Path, b: str | Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
              fork: bool = False, meanwhile: Callable[[], None] | None = None) -> tuple[Imatrix, Imatrix]:
    """load(a), load(b); with `fork` (a single-threaded caller on Linux: the CLI) B is parsed in a
    forked process at the same time as A (gguf-py takes ~0.3 s for a DeepSeek file's 1442 tensor
    records) and sent back pickled: its entries hold counts and file offsets, never the data.

    `meanwhile`: the caller's own work, done while the files are parsed (the diff loads its compiled
    loops: ~0.7 s): with `fork`, A is then parsed in a second forked process too, and meanwhile() runs
    here; without, after the two loads.

    Errors are A's first, then B's, as with two calls in a row (then meanwhile's); Ctrl-C stops all."""
    if not (fork and forked.CAN_FORK and threading.active_count() == 1):
        pair = load(a, chunk_size=chunk_size), load(b, chunk_size=chunk_size)
        if meanwhile is not None:
            meanwhile()
        return pair
    children = [forked.start(lambda: load(b, chunk_size=chunk_size))]
    if meanwhile is not None:
        children.insert(0, forked.start(lambda: load(a, chunk_size=chunk_size), close=[children[0].fd]))
    failed = None
    try:
        if meanwhile is None:
            first = load(a, chunk_size=chunk_size)
        else:
            try:
                meanwhile()
            except Exception as exc:  # noqa: BLE001 - raised after A's and B's errors, which come first
                failed = exc
            first = _received(children.pop(0), a, chunk_size)
        second = _received(children.pop(0), b, chunk_size)
    except BaseException:  # an error (A's first) or Ctrl-C: the other parse is not wanted
        for child in children:
            forked.stop(child)
        raise
    if failed is not None:
        raise failed
    return first, second


def _received(child: forked.Child, path: str | Path, chunk_size: int) -> Imatrix:
    """What a forked load(path) sent: the Imatrix, or its error raised here; parsed here if the child
    died before sending."""
    sent, _ = forked.result(child)
    if sent is None:
        return load(path, chunk_size=chunk_size)
    kind, value = sent
    if kind == "error":
        raise value
    return value


def is_gguf_model(path: str | Path) -> bool:
    """Whether the file is a GGUF model (not an imatrix), from its first megabyte; False for anything
    else, unreadable files included (load says why)."""
    try:
        if detect_format(path) != "gguf":
            return False
        with open(path, "rb") as f:
            refuse_model(f.read(_SNIFF_BYTES), Path(path))
    except FormatError:
        return True
    except (ImatrixError, OSError):
        return False
    return False


def is_imatrix_file(path: str | Path) -> bool:
    """Check for the file browser: the header parses as an imatrix.

    A GGUF model (often gigabytes, with a tokenizer of 100k+ strings that gguf-py parses one by
    one) is turned away by its first megabyte: llama-imatrix writes its imatrix.* keys right after
    general.type, so an imatrix names them there and a model never does (a quantized model's
    `quantize.imatrix.chunks_count` is another key)."""
    try:
        if detect_format(path) == "gguf":
            with open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
            if b"imatrix.chunk_count" not in head and b"imatrix.datasets" not in head:
                return False
        load(path)
    except (ImatrixError, OSError):
        return False
    return True
