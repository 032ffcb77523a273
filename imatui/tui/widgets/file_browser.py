"""A DirectoryTree that lists only imatrix files, recognised by their bytes (as llama.cpp does).

Names narrow the candidates (*.gguf, *.dat, llama-imatrix's *.at_N snapshots); the content check
decides, and is cached by (path, size, mtime) because DirectoryTree re-filters on every reload.
The tree calls filter_paths from its loader thread, so the checks never block the UI.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Iterable

from textual.binding import Binding
from textual.widgets import DirectoryTree

from imatui.formats import is_imatrix_file

_CANDIDATE = re.compile(r"(\.gguf|\.dat|\.at_\d+)$", re.IGNORECASE)

_cache: dict[tuple[str, int, int], bool] = {}
_cache_lock = threading.Lock()


def is_candidate_name(path: Path) -> bool:
    return _CANDIDATE.search(path.name) is not None


def looks_like_imatrix(path: Path) -> bool:
    """Content check with a cache keyed by (path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    ok = is_imatrix_file(path)
    with _cache_lock:
        _cache[key] = ok
    return ok


class ImatrixTree(DirectoryTree):
    """Folders (not hidden) and imatrix files."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                if path.is_dir():
                    out.append(path)
                elif is_candidate_name(path) and looks_like_imatrix(path):
                    out.append(path)
            except OSError:
                continue
        return out

    @property
    def highlighted_file(self) -> Path | None:
        node = self.cursor_node
        if node is None or node.data is None:
            return None
        path = Path(node.data.path)
        return path if path.is_file() else None
