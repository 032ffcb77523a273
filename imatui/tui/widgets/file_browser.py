"""A DirectoryTree that lists only imatrix files, recognised by their bytes (as llama.cpp does).

Names narrow the candidates (*.gguf, *.dat, llama-imatrix's *.at_N snapshots); the content check
decides, and is cached by (path, size, mtime) because DirectoryTree re-filters on every reload.
The tree calls filter_paths from its loader thread, so the checks (and the chunk count read from
the header for the label) never block the UI.

Each file reads `name  size chunks age` (`…at_10 617K 40ch 3m`): a long name is cut in the middle, so that snapshots
(`smollm2-prose.imatrix.gguf.at_10`, `….at_20`) stay apart; the details give way first on a narrow
pane. The open file (`open_file`, set by the app) is marked with ●.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import Iterable

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import DirectoryTree
from textual.widgets._tree import TreeNode

from imatui.errors import ImatrixError
from imatui.formats import is_imatrix_file, load
from imatui.formats.detect import detect_format

_CANDIDATE = re.compile(r"(\.gguf|\.dat|\.at_\d+)$", re.IGNORECASE)

_cache: dict[tuple[str, int, int], bool] = {}
_chunks: dict[tuple[str, int, int], int | None] = {}
_cache_lock = threading.Lock()
OPEN_MARK = "● "
MIN_NAME = 16  # cells of a file name kept before its details give way


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


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns


def chunk_count(path: Path) -> int | None:
    """The file's chunk count from its header (cached by path, size and mtime; None if unreadable)."""
    key = _key(path)
    if key is None:
        return None
    with _cache_lock:
        if key in _chunks:
            return _chunks[key]
    try:
        count = _gguf_chunk_count(path)
        if count is None and detect_format(path) == "dat":
            count = load(path).chunk_count  # at the end of a .dat, after every entry
    except (ImatrixError, OSError, ValueError):
        count = None
    with _cache_lock:
        _chunks[key] = count
    return count


_CHUNK_KEY = b"imatrix.chunk_count"


def _gguf_chunk_count(path: Path) -> int | None:
    """imatrix.chunk_count from a GGUF's first bytes: llama-imatrix writes its imatrix.* keys right
    after general.type, and the key is followed by its type (4: uint32) and value. Parsing the whole
    header (gguf-py, ~0.1 s for a small file) a second time per file made listing a folder crawl."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.startswith(b"GGUF"):
        return None
    at = head.find(_CHUNK_KEY)
    if at < 0 or len(head) < at + len(_CHUNK_KEY) + 8:
        return None
    vtype, value = struct.unpack_from("<II", head, at + len(_CHUNK_KEY))
    return value if vtype == 4 else None


def cached_chunk_count(path: Path) -> int | None:
    key = _key(path)
    with _cache_lock:
        return _chunks.get(key) if key is not None else None


def middle_truncate(name: str, width: int) -> str:
    """`name` in `width` cells, cut in the middle with … (the end tells snapshots apart)."""
    if len(name) <= width:
        return name
    if width <= 1:
        return name[:width]
    tail = (width - 1) // 2 + (width - 1) % 2
    head = width - 1 - tail
    return name[:head] + "…" + name[len(name) - tail:]


def human_size(size: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" or size >= 10 else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.0f}T"


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "m"), (86400, 3600, "h")):
        if seconds < limit:
            return f"{int(seconds // div)}{unit}"
    return f"{int(seconds // 86400)}d"


def file_details(path: Path, now: float | None = None) -> list[str]:
    """size, chunks, age: in the order they give way when the pane is narrow (last first)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    parts = [human_size(st.st_size)]
    chunks = cached_chunk_count(path)
    if chunks is not None:
        parts.append(f"{chunks}ch")
    parts.append(age((now or time.time()) - st.st_mtime))
    return parts


def file_label(name: str, details: list[str], width: int, is_open: bool = False) -> Text:
    """The label of a file in `width` cells: the name (cut in the middle) and as many details as fit,
    keeping at least MIN_NAME cells of the name."""
    mark = OPEN_MARK if is_open else ""
    room = width - len(mark)
    details = list(details)
    while details:
        meta = " " + " ".join(details)
        if room - len(meta) >= min(MIN_NAME, len(name)):
            break
        details.pop()
    meta = " " + " ".join(details) if details else ""
    shown = middle_truncate(name, max(1, room - len(meta)))
    text = Text()
    if mark:
        text.append(mark, style="bold")
    text.append(shown, style="bold" if is_open else "")
    if meta:
        text.append(" " * max(1, room - len(shown) - len(meta) + 1))
        text.append(meta[1:], style="dim")
    return text


class ImatrixTree(DirectoryTree):
    """Folders (not hidden) and imatrix files, with their size, chunk count and age."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    # the file the app shows (marked ●); the app sets it when it opens a file
    open_file: reactive[Path | None] = reactive(None)

    def set_open_file(self, path: str | Path | None) -> None:
        self.open_file = None if path is None else Path(path).resolve()

    def watch_open_file(self) -> None:
        self._invalidate()

    def render_label(self, node: TreeNode, base_style: Style, style: Style) -> Text:
        data = node.data
        if data is None or node.allow_expand or not self.is_mounted:
            return super().render_label(node, base_style, style)
        path = Path(data.path)
        depth = 0
        parent = node.parent
        while parent is not None:
            depth += 1
            parent = parent.parent
        # guides (guide_depth a level below the root), the scrollbar, one spare cell
        width = self.size.width - depth * self.guide_depth - 2
        is_open = self.open_file is not None and path.resolve() == self.open_file
        label = file_label(path.name, file_details(path), width, is_open)
        label.stylize(style)
        return label

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                if path.is_dir():
                    out.append(path)
                elif is_candidate_name(path) and looks_like_imatrix(path):
                    chunk_count(path)  # for the label, read here in the loader thread
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
