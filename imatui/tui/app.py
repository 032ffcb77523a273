"""The explorer App: composes the main view and routes messages; the widgets do the drawing.

Loading and statistics run in a thread worker (group "load") that posts DataLoaded / LoadFailed;
the per-channel values for the detail pane come from another (group "channels"). The handlers
update the widgets in place, so a reload keeps the cursor, the sort, the filter and the selection.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Iterable

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, DirectoryTree, Footer, Input, Static
from textual.worker import WorkerCancelled, WorkerFailed, get_current_worker

from imatui.errors import ImatrixError, TruncatedError
from imatui.imatrix import Imatrix
from imatui.stats.tensor import StatsReport
from imatui.tui.messages import ChannelsReady, ChannelsUnavailable, DataLoaded, LoadFailed, LoadProgress, LoadWriting
from imatui.tui.widgets.channel_plot import DetailPane, summarize_channels
from imatui.tui.widgets.file_browser import ImatrixTree
from imatui.tui.widgets.info_bar import InfoBar
from imatui.tui.widgets.layer_sparklines import LayerSparklines
from imatui.tui.widgets.stats_table import LayerTable, StatsTable, TensorTable, name_matcher
from imatui.tui.watcher import LiveWatcher

VIEWS = ("all", "table", "layers", "detail")
ENDLESS_GROUPS = {"watch", "_loader"}
MAIN_VIEW_ACTIONS = {"filter", "clear_filter", "next_sort", "previous_sort", "reverse_sort", "toggle_table",
                     "next_metric", "previous_metric", "cycle_view", "toggle_browser", "diff", "experts"}
# below this width the detail pane only shows in the "detail" view
NARROW = 100


class MainView(Vertical):
    """Table and panes; its size decides the narrow/short layouts."""

    def on_resize(self) -> None:
        app = self.app
        if isinstance(app, ImatuiApp):
            app._apply_layout()


class ImatuiApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "imatui"

    BINDINGS = [
        Binding("question_mark", "help", "Help", id="help", tooltip="keys and what the columns mean"),
        # priority: run before the keys that follow it in the same read (a paste, or fast typing) are
        # handed to the widget that has the focus, so that they land in the filter box, not in the table
        Binding("slash", "filter", "Filter", id="filter", priority=True, tooltip="filter tensor names (text or regex)"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="clear_filter"),
        Binding("s", "next_sort", "Sort", id="sort.next", tooltip="sort by the next column"),
        Binding("S", "previous_sort", "Sort back", show=False, id="sort.previous"),
        Binding("r", "reverse_sort", "Reverse", show=False, id="sort.reverse", tooltip="reverse the sort"),
        Binding("t", "toggle_table", "Layers", id="table.toggle",
                tooltip="switch between the tensor table and the per-layer table"),
        Binding("m", "next_metric", "Metric", id="metric.next", tooltip="next sparkline metric"),
        Binding("M", "previous_metric", "Metric back", show=False, id="metric.previous"),
        Binding("v", "cycle_view", "View", id="view.cycle", tooltip="all panes / table / layers / detail"),
        Binding("b", "toggle_browser", "Files", id="browser.toggle", tooltip="show or hide the file browser"),
        Binding("d", "diff", "Diff", id="diff", tooltip="diff with the file selected in the browser"),
        Binding("p", "save_screenshot", "SVG", id="screenshot", tooltip="save an SVG screenshot here"),
        Binding("c", "convergence", "Converge", show=False, id="convergence",
                tooltip="convergence over the checkpoints of a running collection or of snapshot files"),
        Binding("x", "experts", "Experts", id="experts",
                tooltip="MoE: the expert map, layer × expert (dead and rare experts, coverage)"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    view: reactive[str] = reactive("all")

    def __init__(self, paths: list[str], *, chunk_size: int = 512, diff_with: str | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.diff_with = diff_with
        self.paths = [str(p) for p in paths] or ["."]
        self.current_path: str | None = None
        self.shown_path: str | None = None  # the file whose numbers are on screen
        self.imatrix: Imatrix | None = None
        self.report: StatsReport | None = None
        self.selected_name: str | None = None
        self.browse_root, open_first, self.series = self._plan(self.paths)
        self._initial_path = open_first
        self.load_started: float | None = None
        self.table_filled_at: float | None = None
        self.load_errors: list[str] = []
        self.created_at = time.perf_counter()
        self.first_frame_at: float | None = None
        self._open_scheduled = False
        self._loaded_stamp: tuple[str, tuple[int, int]] | None = None  # (path, (size, mtime_ns)) of the last load
        self.watcher = LiveWatcher(self)  # follows the shown file (issue 4: live monitoring)

    @staticmethod
    def _plan(paths: list[str]) -> tuple[Path, str | None, list[str]]:
        """(browser root, file to open, snapshot series) for what the command line named."""
        if len(paths) == 1:
            p = Path(paths[0])
            if p.is_dir():
                return p, None, []
            parent = p.parent if str(p.parent) else Path(".")
            return (parent if parent.is_dir() else Path(".")), str(p), []
        # several files: a snapshot series; open the newest (the last named), browse the rest
        common = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
        return common, paths[-1], list(paths)

    # -- composition -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield InfoBar(id="info")
        with Horizontal(id="body"):
            if self._initial_path is None or self.series:
                yield ImatrixTree(self.browse_root.resolve(), id="browser")
            # otherwise the browser is mounted when first shown (b): listing a folder checks the
            # bytes of every candidate file, work that must not slow down the first load
            with MainView(id="main", classes="-empty"):
                yield Input(placeholder="filter tensor names: text or regex (Enter keeps, Esc clears)",
                            id="filter")
                yield Static("", id="placeholder")
                with ContentSwitcher(initial="tensors", id="tables"):
                    yield TensorTable(id="tensors")
                    yield LayerTable(id="layers")
                with Horizontal(id="lower"):
                    yield LayerSparklines(id="sparklines")
                    yield DetailPane(id="detail")
        footer = Footer()
        footer.compact = True  # every binding fits on 80 columns
        yield footer

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # keys of the main view do nothing while another screen (help, diff, ...) is on top
        if action in MAIN_VIEW_ACTIONS and self.screen_stack and self.screen is not self.screen_stack[0]:
            return False
        if action == "experts":  # shown (and active) only for a file with expert tensors
            return self.imatrix is not None and any(e.n_mat > 1 for e in self.imatrix.entries.values())
        return True

    @property
    def main_screen(self) -> Screen:
        """The explorer's own screen. App.query would search the screen on top (help, diff,
        convergence), so every lookup of our widgets goes through this."""
        return self.screen_stack[0]

    @property
    def tensor_table(self) -> TensorTable:
        return self.main_screen.query_one("#tensors", TensorTable)

    @property
    def layer_table(self) -> LayerTable:
        return self.main_screen.query_one("#layers", LayerTable)

    @property
    def active_table(self) -> StatsTable:
        return self.main_screen.query_one(f"#{self.current_table}", StatsTable)

    @property
    def current_table(self) -> str:
        """"tensors" or "layers": the table in front."""
        return str(self.main_screen.query_one("#tables", ContentSwitcher).current)

    def on_mount(self) -> None:
        self.theme = os.environ.get("IMATUI_THEME", "textual-dark")
        self.call_after_refresh(self._first_frame)
        info = self.main_screen.query_one(InfoBar)
        self.main_screen.query_one("#filter").display = False
        self._apply_layout()
        if self._initial_path is None:
            info.path = str(self.browse_root)
            info.state = "choose an imatrix file in the browser (Enter opens it)"
            self.main_screen.query_one(DetailPane).clear("no file open")
            self._placeholder(f"{self.browse_root.resolve()}\n\nchoose an imatrix file in the browser "
                              "(Enter opens it)")
            self.main_screen.query_one("#browser").focus()
        elif not Path(self._initial_path).exists():
            info.path = self._initial_path
            self.set_live_status(f"waiting for {Path(self._initial_path).name}")
            self.main_screen.query_one(DetailPane).clear(f"{self._initial_path} does not exist yet")
            self._placeholder(f"waiting for {self._initial_path}\n\nit opens when it appears")
            self.current_path = self._initial_path
            self.watcher.follow(self._initial_path)
        else:
            # paint the first frame before the loader thread competes for the GIL
            self._open_scheduled = True
            self.call_after_refresh(self._open_initial, self._initial_path)
            self.tensor_table.focus()
        if self.diff_with:
            self._push_diff(self.paths[0], self.diff_with)

    def on_unmount(self) -> None:
        self.watcher.stop()

    @property
    def _view_alive(self) -> bool:
        """False while the app shuts down (workers' messages may still arrive then)."""
        return bool(self.screen_stack) and bool(self.screen_stack[0].query("#main"))

    def _placeholder(self, text: str) -> None:
        """What the table area says while there is no table."""
        self.main_screen.query_one("#placeholder", Static).update(text)

    def _open_initial(self, path: str) -> None:
        self._open_scheduled = False
        if self.current_path is None:
            self.open_path(path)

    def _first_frame(self) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()

    # -- public API (also used by the watcher) -----------------------------------------------
    def open_path(self, path: str | Path) -> None:
        """Load a file in place of the current one (cursor, sort and filter are kept)."""
        path = str(path)
        info = self.main_screen.query_one(InfoBar)
        if path != self.current_path:
            info.path = path
        self.current_path = path
        info.state = "loading…"
        if self.report is None:
            # a static note, not Textual's animated LoadingIndicator: its 60 fps repaints take GIL
            # time from the statistics threads (about 15% on the 1 GB file); the header counts
            self._placeholder(f"reading {Path(path).name} …\n\nthe table fills in when its statistics "
                              "are computed")
        self.load_started = time.perf_counter()
        self._load(path)

    def set_live_status(self, status: str) -> None:
        """The header's live marker: "live", "idle", "writing…", "waiting for FILE", "deleted"."""
        # query, not query_one: the header timer can fire while the app is tearing its screen down
        if not self.screen_stack:
            return  # shutting down: Textual has already closed the screens
        for info in self.main_screen.query(InfoBar):
            info.live = status

    def show_table(self, which: str, focus: bool = True) -> None:
        self.main_screen.query_one("#tables", ContentSwitcher).current = which
        if focus:
            self.active_table.focus()
        # the layer marker follows the table in front
        sparklines = self.main_screen.query_one(LayerSparklines)
        if which == "layers":
            key = self.layer_table.selected_key
            sparklines.select_layer(None if key is None else int(key))
        elif self.report is not None and self.selected_name is not None:
            t = self.report.tensor(self.selected_name)
            sparklines.select_layer(None if t is None else t.layer)

    def set_view(self, view: str) -> None:
        self.view = view

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        self.show_table("tensors") if column not in {c.key for c in self.active_table.spec} else None
        self.active_table.sort_by(column, reverse)

    def set_metric(self, key: str) -> None:
        self.main_screen.query_one(LayerSparklines).set_metric(key)

    # -- loading -------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, path: str) -> None:
        import importlib

        from imatui.formats import load
        from imatui.stats.tensor import compute_stats

        # the follower's reader: files up to its COPY_LIMIT are parsed from a private copy (a writer
        # truncating the file during the parse cannot SIGBUS gguf-py's memory map), and an empty or
        # half-written file is told apart from a broken one
        live = importlib.import_module("imatui.live.follow")

        worker = get_current_worker()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.1:  # ten header updates a second are plenty
                last[0] = now
                self.post_message(LoadProgress(path, done, total))

        try:
            try:
                outcome = live.try_load(path, self.chunk_size, copy_limit=live.COPY_LIMIT)
            except OSError:  # a folder, no permission: load() says it in its own words
                outcome = None
            if outcome is not None and outcome.kind in ("writing", "truncated"):
                self.post_message(LoadWriting(path))  # the watcher takes it from here
                return
            if outcome is not None and outcome.kind == "invalid":
                self.post_message(LoadFailed(path, outcome.message))
                return
            if outcome is not None and outcome.imatrix is not None and outcome.stamp is not None:
                imatrix, stamp = outcome.imatrix, outcome.stamp[:2]
            else:
                imatrix, stamp = load(path, chunk_size=self.chunk_size), None  # missing: its error
            report = compute_stats(imatrix, progress=progress, cancelled=lambda: worker.is_cancelled)
        except InterruptedError:
            return
        except TruncatedError:
            # a large, lazily read file rewritten under the statistics pass
            self.post_message(LoadWriting(path))
            return
        except ImatrixError as exc:
            self.post_message(LoadFailed(path, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not take the app down
            self.post_message(LoadFailed(path, f"{path}: {type(exc).__name__}: {exc}"))
            return
        if not worker.is_cancelled:
            if stamp is not None:
                self._loaded_stamp = (path, stamp)
            self.post_message(DataLoaded(path, imatrix, report))

    def on_load_writing(self, message: LoadWriting) -> None:
        """An empty or half-written file at open: no error, the watcher picks it up when complete."""
        if message.path != self.current_path or not self._view_alive:
            return
        from imatui.tui.watcher import WRITING

        name = Path(message.path).name
        info = self.main_screen.query_one(InfoBar)
        if self.report is None:
            info.state = ""
            self._placeholder(f"{name} is being written…\n\nit opens when it is complete")
            self.main_screen.query_one(DetailPane).clear(f"{name} is being written…")
        else:
            info.state = f"{name} is being written… (it opens when complete)"
        self.watcher.follow(message.path)
        self.set_live_status(WRITING)

    def on_data_loaded(self, message: DataLoaded) -> None:
        if message.path != self.current_path or not self._view_alive:
            return  # a file the user has since moved away from, or the app is closing
        self.imatrix, self.report = message.imatrix, message.report
        self.shown_path = message.path
        self.main_screen.query_one("#main").remove_class("-empty")
        loaded = self._loaded_stamp
        self.watcher.follow(message.path, shown=message.imatrix,
                            stamp=loaded[1] if loaded is not None and loaded[0] == message.path else None)
        info = self.main_screen.query_one(InfoBar)
        info.state = ""
        info.report = message.report
        self.sub_title = Path(message.path).name
        with self.batch_update():
            self.tensor_table.show_report(message.report)
            self.layer_table.show_report(message.report)
            self.main_screen.query_one(LayerSparklines).show_report(message.report)
        focused = self.focused
        if (focused is None or not focused.display) and self.screen is self.screen_stack[0]:
            self.active_table.focus()
        if self.load_started is not None and self.table_filled_at is None:
            self.table_filled_at = time.perf_counter()
        self._select(self.tensor_table.selected_key, force=True)
        self.refresh_bindings()  # the experts key shows for MoE files
        from imatui.tui.screens.experts import ExpertsScreen

        for screen in self.screen_stack:
            if isinstance(screen, ExpertsScreen):
                screen.update_data(message.imatrix, message.report)  # a live collection: experts light up

    def on_load_progress(self, message: LoadProgress) -> None:
        if message.path == self.current_path and self._view_alive:
            self.main_screen.query_one(InfoBar).state = f"statistics {message.done}/{message.total}…"

    def on_load_failed(self, message: LoadFailed) -> None:
        self.load_errors.append(message.message)
        if not self._view_alive:
            return
        info = self.main_screen.query_one(InfoBar)
        if self.report is not None and self.shown_path is not None:
            # what is on screen stays, and says which file it is from
            if message.path == self.current_path and message.path != self.shown_path:
                self.current_path = self.shown_path
                # back to following the file on screen (the watcher may have taken the failed one)
                self.watcher.follow(self.shown_path, shown=self.imatrix)
            info.path = self.shown_path
            info.state = ""
        else:
            info.state = "cannot open"
            self._placeholder(f"cannot open {message.message}\n\nb: choose another file")
            if message.path == self.current_path:
                # nothing else on screen: follow it, so that a collector's complete file opens when it
                # lands (the same error found again by the follower is not shown twice)
                self.watcher.follow(message.path, failed=message.message)
        self.notify(message.message, title="cannot open", severity="error", timeout=8)

    # -- selection and detail ----------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#tensors")
    def _tensor_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if not self._view_alive:
            return
        self._select(None if event.row_key is None else str(event.row_key.value))

    @on(DataTable.RowSelected, "#tensors")
    def _tensor_selected(self, event: DataTable.RowSelected) -> None:
        # Enter on a tensor: its detail pane in full, and back
        self.view = "all" if self.view == "detail" else "detail"

    @on(DataTable.RowHighlighted, "#layers")
    def _layer_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if not self._view_alive:
            return
        if event.row_key is not None and self.current_table == "layers":
            self.main_screen.query_one(LayerSparklines).select_layer(int(str(event.row_key.value)))

    def _select(self, name: str | None, force: bool = False) -> None:
        if name == self.selected_name and not force:
            return
        self.selected_name = name
        report, detail = self.report, self.main_screen.query_one(DetailPane)
        t = report.tensor(name) if (report is not None and name is not None) else None
        if t is None:
            detail.clear("no tensor selected" if report is not None else "")
            return
        self.main_screen.query_one(LayerSparklines).select_layer(t.layer)
        detail.show_tensor(t)
        self._read_channels(self.current_path, name)

    @work(thread=True, exclusive=True, group="channels", exit_on_error=False)
    def _read_channels(self, path: str | None, name: str) -> None:
        imatrix = self.imatrix
        if imatrix is None or path is None or name not in imatrix.entries:
            return
        try:
            entry = imatrix.entries[name]
            values = entry.mean_importance()
            summary = summarize_channels(values)  # the sort of 1.8 M MoE values: not on the UI thread
        except TruncatedError:
            # a large file read lazily, rewritten by its collector: not an error; the watcher's
            # reload (DataLoaded) selects the tensor again
            if not get_current_worker().is_cancelled:
                self.post_message(ChannelsUnavailable(path, name))
            return
        except ImatrixError as exc:
            self.post_message(LoadFailed(path, str(exc)))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(ChannelsReady(path, name, values, entry.counts, summary))

    def on_channels_ready(self, message: ChannelsReady) -> None:
        if message.path != self.current_path or message.name != self.selected_name or self.report is None:
            return
        t = self.report.tensor(message.name)
        if t is not None and self._view_alive:
            self.main_screen.query_one(DetailPane).show_channels(t, message.values, message.counts,
                                                                 message.summary)

    def on_channels_unavailable(self, message: ChannelsUnavailable) -> None:
        if message.path != self.current_path or message.name != self.selected_name or not self._view_alive:
            return
        self.main_screen.query_one(DetailPane).unavailable("file is being rewritten…")

    async def wait_for_data(self) -> None:
        """Until the file is loaded and the detail pane drawn (for tests, headless screenshots)."""
        while self._open_scheduled:
            await asyncio.sleep(0.005)
        for _ in range(100):
            # every finite worker: ours, the diff screen's; not the endless ones (the file watcher,
            # DirectoryTree's loader queue)
            busy = [w for w in self.workers if not w.is_finished and w.group not in ENDLESS_GROUPS]
            if not busy:
                break
            try:
                await self.workers.wait_for_complete(busy)
            except (WorkerCancelled, WorkerFailed):
                pass  # an exclusive worker superseded by a newer one (or failed): look again
            await asyncio.sleep(0.01)  # let the posted messages be handled

    # -- browser -------------------------------------------------------------------------------
    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.open_path(str(event.path))
        self.tensor_table.focus()

    @property
    def browser(self) -> ImatrixTree | None:
        found = self.main_screen.query("#browser")
        return found.first(ImatrixTree) if found else None

    def show_browser(self, show: bool = True) -> ImatrixTree | None:
        browser = self.browser
        if browser is None and show:
            browser = ImatrixTree(self.browse_root.resolve(), id="browser")
            self.main_screen.query_one("#body").mount(browser, before="#main")
        if browser is not None:
            browser.display = show
            browser.focus() if show else self.active_table.focus()
        return browser

    def action_toggle_browser(self) -> None:
        browser = self.browser
        self.show_browser(browser is None or not browser.display)

    # -- filter ---------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.main_screen.query_one("#filter", Input)
        if self.focused is box:  # a "/" typed in the box (the binding goes first): it is text there
            box.insert_text_at_cursor("/")
            return
        box.display = True
        self.show_table("tensors", focus=False)
        # now, not later (focus() defers): keys typed or pasted right after "/" belong to the box
        self.screen.set_focus(box)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        matcher, problem = name_matcher(event.value)
        self.tensor_table.set_filter(matcher)
        event.input.set_class(problem is not None, "-invalid-regex")
        event.input.tooltip = problem

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.display = False
        self.tensor_table.focus()

    def action_clear_filter(self) -> None:
        box = self.main_screen.query_one("#filter", Input)
        if box.value:
            box.value = ""
            self.tensor_table.set_filter(name_matcher("")[0])
        box.display = False
        self.active_table.focus()

    # -- sorting, tables, metrics, views -----------------------------------------------------
    def action_next_sort(self) -> None:
        self.active_table.cycle_sort(1)

    def action_previous_sort(self) -> None:
        self.active_table.cycle_sort(-1)

    def action_reverse_sort(self) -> None:
        self.active_table.reverse_sort()

    def action_toggle_table(self) -> None:
        switcher = self.main_screen.query_one("#tables", ContentSwitcher)
        self.show_table("layers" if switcher.current == "tensors" else "tensors")

    def action_next_metric(self) -> None:
        self.main_screen.query_one(LayerSparklines).cycle_metric(1)

    def action_previous_metric(self) -> None:
        self.main_screen.query_one(LayerSparklines).cycle_metric(-1)

    def action_cycle_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]

    def watch_view(self, view: str) -> None:
        if view == "layers":
            self.show_table("layers")
        elif view in ("detail", "table") and self.current_table == "layers":
            self.show_table("tensors")
        self._apply_layout()

    def _apply_layout(self) -> None:
        if not self.is_mounted:
            return
        main = self.main_screen.query_one("#main")
        for v in VIEWS:
            main.set_class(v == self.view, f"-view-{v}")
        main.set_class(self.size.width < NARROW, "-narrow")
        main.set_class(self.size.height < 30, "-short")

    # -- diff, screenshot, help ----------------------------------------------------------------
    def action_diff(self) -> None:
        browser = self.browser
        other = browser.highlighted_file if browser is not None and browser.display else None
        if self.current_path is None or self.report is None:
            self.notify("open a file first", severity="warning")
            return
        if other is None:
            self.notify("select the other file in the browser, then press d", severity="warning")
            self.show_browser(True)
            return
        self._push_diff(self.current_path, str(other))

    def _push_diff(self, a: str, b: str) -> None:
        from imatui.tui.screens.diff import DiffScreen

        self.push_screen(DiffScreen(a, b, chunk_size=self.chunk_size))

    def action_save_screenshot(self) -> None:
        stem = Path(self.current_path).name if self.current_path else "imatui"
        filename = f"imatui-{stem}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        try:
            saved = self.save_screenshot(filename=filename, path=os.getcwd())
        except OSError as exc:
            self.notify(f"cannot save the screenshot: {exc}", severity="error")
            return
        self.notify(f"saved {saved}", title="screenshot")

    def action_convergence(self) -> None:
        from imatui.tui.screens.convergence import ConvergenceScreen

        if not isinstance(self.screen, ConvergenceScreen):
            self.push_screen(ConvergenceScreen(self.watcher))

    def action_experts(self) -> None:
        from imatui.tui.screens.experts import ExpertsScreen

        if self.imatrix is None:
            self.notify("open a file first", severity="warning")
            return
        if not any(e.n_mat > 1 for e in self.imatrix.entries.values()):
            self.notify("no expert tensors in this file (a dense model, or a legacy .dat without "
                        "per-expert counts)", severity="warning")
            return
        self.push_screen(ExpertsScreen(self.imatrix, self.report))

    def action_help(self) -> None:
        from imatui.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        from imatui.tui.commands import app_commands

        yield from super().get_system_commands(screen)
        if screen is self.screen_stack[0]:
            yield from app_commands(self)


def make_app(paths: list[str], *, chunk_size: int = 512, diff_with: str | None = None) -> ImatuiApp:
    """The App for the CLI, the tests and headless screenshots."""
    return ImatuiApp(list(paths), chunk_size=chunk_size, diff_with=diff_with)


__all__ = ["ImatuiApp", "make_app"]
