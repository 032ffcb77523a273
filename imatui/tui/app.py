"""The explorer App: composes the screens, routes the open file's messages, keeps what is global.

The main view is a screen of its own (screens/main.py); the open file, its following and its
snapshot series belong to one OpenFile (open_file.py), whose messages arrive here and are handed to
the main screen; the theme, the command palette, help, screenshots and quitting stay here.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Iterable

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import WorkerCancelled, WorkerFailed

from imatui.live.series import plan_open
from imatui.tui.commands import main_commands
from imatui.tui.messages import (ChannelsReady, ChannelsUnavailable, DataLoaded, FileDeleted, FileWaiting,
                                 LiveStateChanged, LoadFailed, LoadProgress, LoadWriting, SeriesChanged)
from imatui.tui.open_file import OpenFile
from imatui.tui.screens.diff import DiffScreen
from imatui.tui.screens.experts import ExpertsScreen
from imatui.tui.screens.help import HelpScreen
from imatui.tui.screens.main import MainScreen
from imatui.tui.screenshot import save_or_deliver
from imatui.tui.screens.too_small import MIN_HEIGHT, MIN_WIDTH, TooSmallScreen
from imatui.tui.widgets.stats_table import TensorTable

ENDLESS_GROUPS = {"watch", "_loader"}  # workers that never finish: the follower, DirectoryTree's loader


class CommandLineDiff(DiffScreen):
    """`imatui diff A B`: q leaves the program (Esc still shows A's main view underneath)."""

    BINDINGS = [Binding("q", "app.quit", "Quit", id="diff.quit", tooltip="leave imatui")]


class ImatuiApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "imatui"

    BINDINGS = [
        Binding("question_mark", "help", "Help", id="help", tooltip="keys and what the columns mean"),
        Binding("p", "save_screenshot", "SVG", id="screenshot", tooltip="save an SVG screenshot here"),
        Binding("q", "quit", "Quit", id="quit"),
        # htop, btop and k9s quit on Ctrl+C; so does this (Textual's default only says to press Ctrl+Q)
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="quit.ctrl_c"),
    ]

    def __init__(self, paths: list[str], *, chunk_size: int = 512, diff_with: str | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.diff_with = diff_with
        self.paths = [str(p) for p in paths] or ["."]
        self.open_file = OpenFile(self, chunk_size=chunk_size)
        self.main = MainScreen(self.open_file, plan_open(self.paths))
        self.load_errors: list[str] = []
        self.created_at = time.perf_counter()
        self.first_frame_at: float | None = None

    def get_default_screen(self) -> Screen:
        return self.main

    def on_mount(self) -> None:
        self.theme = os.environ.get("IMATUI_THEME", "textual-dark")
        self.call_after_refresh(self._first_frame)
        self.call_after_refresh(self.on_resize)
        if self.diff_with:
            self.push_screen(CommandLineDiff(self.paths[0], self.diff_with, chunk_size=self.chunk_size))

    def _first_frame(self) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()

    def on_unmount(self) -> None:
        self.open_file.stop()

    def on_resize(self, event: events.Resize | None = None) -> None:
        """Below 80×24 one screen says "terminal too small" instead of overlapping panes."""
        size = self.size if event is None else event.size  # this runs before App's own handler
        small = size.width < MIN_WIDTH or size.height < MIN_HEIGHT
        if small and not isinstance(self.screen, TooSmallScreen):
            self.push_screen(TooSmallScreen())
        elif not small and isinstance(self.screen, TooSmallScreen):
            self.pop_screen()

    # -- the open file's messages, routed to the main screen -----------------------------------------
    @property
    def _main_alive(self) -> bool:
        """False while the app shuts down (workers' messages may still arrive then)."""
        return self.main.is_attached and bool(self.main.query("#main"))

    def on_data_loaded(self, message: DataLoaded) -> None:
        if self._main_alive:
            self.main.data_loaded(message)
            for screen in self.screen_stack:
                if isinstance(screen, ExpertsScreen) and message.path == self.main.shown_path:
                    screen.update_data(message.imatrix, message.report)  # a live collection: experts light up

    def on_load_failed(self, message: LoadFailed) -> None:
        self.load_errors.append(message.message)
        if self._main_alive:
            self.main.load_failed(message)
        self.notify(message.message, title="cannot open", severity="error", timeout=8)

    def on_load_writing(self, message: LoadWriting) -> None:
        if self._main_alive:
            self.main.writing(message.path)

    def on_file_waiting(self, message: FileWaiting) -> None:
        if self._main_alive:
            self.main.waiting(message.path)

    def on_file_deleted(self, message: FileDeleted) -> None:
        self.notify(f"{message.path} was deleted; showing the last data", title="live", severity="warning",
                    timeout=6)

    def on_load_progress(self, message: LoadProgress) -> None:
        if self._main_alive:
            self.main.progress(message)

    def on_live_state_changed(self, message: LiveStateChanged) -> None:
        if self._main_alive:
            self.main.set_live_status(message.text)

    def on_series_changed(self, message: SeriesChanged) -> None:
        if message.note:
            self.notify(message.note, title="live", timeout=4)

    def on_channels_ready(self, message: ChannelsReady) -> None:
        if self._main_alive:
            self.main.channels_ready(message)

    def on_channels_unavailable(self, message: ChannelsUnavailable) -> None:
        if self._main_alive:
            self.main.channels_unavailable(message)

    # -- global actions -----------------------------------------------------------------------
    def action_save_screenshot(self) -> None:
        save_or_deliver(self, self.open_file.shown_path or self.open_file.path)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))  # that screen's own keys and columns

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if screen is self.main:
            yield from main_commands(self.main)

    async def wait_for_data(self) -> None:
        """Until the file is loaded and the detail pane drawn (for tests, headless screenshots)."""
        quiet = 0
        for _ in range(2000):
            # every finite worker: the channel reader, the diff screen's; not the endless ones
            busy = [w for w in self.workers if not w.is_finished and w.group not in ENDLESS_GROUPS]
            if busy:
                try:
                    await self.workers.wait_for_complete(busy)
                except (WorkerCancelled, WorkerFailed):
                    pass  # an exclusive worker superseded by a newer one (or failed): look again
            quiet = 0 if (busy or self.main.open_scheduled or self.open_file.busy) else quiet + 1
            if quiet >= 3:
                break
            await asyncio.sleep(0.01)  # let the posted messages be handled

    # -- the main view's state, for the CLI's screenshot, the tests and the benchmarks -------------
    @property
    def current_path(self) -> str | None:
        return self.open_file.path

    @property
    def report(self):
        return self.main.report

    @property
    def imatrix(self):
        return self.main.imatrix

    @imatrix.setter
    def imatrix(self, value) -> None:
        self.main.imatrix = value

    @property
    def selected_name(self) -> str | None:
        return self.main.selected_name

    @property
    def tensor_table(self) -> TensorTable:
        return self.main.tensor_table

    @property
    def layer_table(self):
        return self.main.layer_table

    @property
    def browser(self):
        return self.main.browser

    @property
    def table_filled_at(self) -> float | None:
        return self.main.table_filled_at

    @property
    def main_screen(self) -> MainScreen:
        return self.main

    @property
    def view(self) -> str:
        return self.main.view

    @view.setter
    def view(self, view: str) -> None:
        self.main.view = view

    def set_view(self, view: str) -> None:
        self.main.view = view

    def open_path(self, path: str | Path) -> None:
        self.main.open_path(path)

    def set_live_status(self, status: str) -> None:
        if self._main_alive:
            self.main.set_live_status(status)


def make_app(paths: list[str], *, chunk_size: int = 512, diff_with: str | None = None) -> ImatuiApp:
    """The App for the CLI, the tests and headless screenshots."""
    return ImatuiApp(list(paths), chunk_size=chunk_size, diff_with=diff_with)


__all__ = ["ImatuiApp", "make_app"]
