"""Below 80×24 the main view's panes would draw over each other: this screen says so instead."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static

MIN_WIDTH, MIN_HEIGHT = 80, 24


class TooSmallScreen(Screen[None]):
    DEFAULT_CSS = """
    TooSmallScreen { align: center middle; }
    #too-small { width: auto; height: auto; text-align: center; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="too-small")

    def on_mount(self) -> None:
        self.on_resize()

    def on_resize(self, event: events.Resize | None = None) -> None:
        width, height = self.app.size if event is None else event.size
        self.query_one("#too-small", Static).update(
            f"terminal too small: {width}×{height}\nimatui needs {MIN_WIDTH}×{MIN_HEIGHT}\n\nq quits")
