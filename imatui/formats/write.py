"""Saving imatrix files safely: atomic (temporary file, fsync, rename), never over a file unasked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from imatui.errors import ImatrixError, OverwriteError
from imatui.imatrix import Imatrix


def check_target(path: Path, force: bool) -> Path:
    """The folder an output file goes to, after refusing a folder in its place, an existing file
    (without force) and a missing folder."""
    if path.is_dir():
        raise ImatrixError("is a directory", path)
    if path.exists() and not force:
        raise OverwriteError("already exists (use --force to replace it)", path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImatrixError(f"folder {folder} does not exist", path)
    return folder


def save(imatrix: Imatrix, path: str | Path, *, format: str | None = None, force: bool = False) -> Path:
    """Write `imatrix` to `path` as "gguf" or "dat" (default: by the suffix, .dat -> dat, else gguf).

    Refuses to replace an existing file unless force=True. The file appears complete or not at all.
    """
    path = Path(path)
    if format is None:
        format = "dat" if path.suffix == ".dat" else "gguf"
    if format not in ("gguf", "dat"):
        raise ImatrixError(f"unknown format {format!r} (use gguf or dat)")
    folder = check_target(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if format == "gguf":
            from imatui.formats.gguf import write_gguf

            write_gguf(imatrix, tmp)
        else:
            from imatui.formats.legacy import write_legacy

            write_legacy(imatrix, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
