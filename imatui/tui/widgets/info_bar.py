"""The header line: file, format, tensors, chunks × chunk size, datasets, live marker."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from imatui.stats.tensor import StatsReport

_LIVE_STYLES = {"live": "bold green", "idle": "dim", "writing…": "bold yellow", "deleted": "bold red",
                "file deleted": "bold red"}


class InfoBar(Widget):
    DEFAULT_CSS = "InfoBar { dock: top; height: 1; width: 1fr; }"

    path: reactive[str] = reactive("")
    report: reactive[StatsReport | None] = reactive(None, always_update=True)
    state: reactive[str] = reactive("")  # "loading", an error line, or "" when showing data
    live: reactive[str] = reactive("idle")

    def render(self) -> Text:
        text = Text(" imatui ", style="bold reverse")
        name = Path(self.path).name if self.path else ""
        if name:
            text.append(f" {name}", style="bold")
        r = self.report
        if r is not None:
            datasets = ", ".join(Path(d).name for d in r.datasets) or "no dataset"
            text.append(f"  {r.format.upper()}", style="bold")
            text.append(f" · {len(r.tensors)} tensors · {r.chunk_count} × {r.chunk_size} · {datasets}")
        if self.state:
            text.append(f"  {self.state}", style="italic")
        width = max(1, self.size.width)
        if not self.live:
            text.truncate(width, overflow="ellipsis")
            return text
        # the live marker always shows; the file details give way on a narrow terminal
        # the watcher appends growth ("live · 5.0/min · 12s ago"): style by the leading words
        style = next((v for k, v in _LIVE_STYLES.items() if self.live.startswith(k)), "bold yellow")
        marker = Text(f" ● {self.live} ", style=style)
        room = width - marker.cell_len - 1
        if room < 8:
            marker.truncate(width, overflow="ellipsis")
            return marker
        text.truncate(room, overflow="ellipsis")
        text.append(" " * (width - text.cell_len - marker.cell_len))
        text.append_text(marker)
        return text
