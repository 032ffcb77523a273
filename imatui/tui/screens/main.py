"""The main view: header, file browser, tensor and per-layer tables, sparklines, detail pane.

Its compose, bindings and handlers live here (frogmouth's and posting's split); the App routes the
open file's messages to the methods of the "what the open file says" section. The screen never
reads a file: it asks the OpenFile to open one, and to read one tensor's channels.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from rich.text import Text
from textual.widgets import ContentSwitcher, DataTable, DirectoryTree, Footer, Input, Static

from imatui.imatrix import Imatrix
from imatui.live.series import OpenPlan
from imatui.stats.tensor import StatsReport
from imatui.tui.screens.experts import ExpertsScreen
from imatui.tui.messages import ChannelsReady, ChannelsUnavailable, DataLoaded, LoadFailed, LoadProgress
from imatui.tui.open_file import OpenFile
from imatui.tui.screens.convergence import ConvergenceScreen
from imatui.tui.screens.diff import DiffScreen
from imatui.tui.widgets.channel_plot import DetailPane
from imatui.tui.widgets.file_browser import ImatrixTree
from imatui.tui.widgets.info_bar import InfoBar
from imatui.tui.widgets.layer_sparklines import LayerSparklines
from imatui.tui.widgets.stats_table import LayerTable, StatsTable, TensorTable, name_matcher

VIEWS = ("all", "table", "layers", "detail")
# below this width the detail pane only shows in the "detail" view
NARROW = 100


class MainView(Vertical):
    """Table and panes; its size decides the narrow/short layouts."""

    def on_resize(self) -> None:
        if isinstance(self.screen, MainScreen):
            self.screen.apply_layout()


class MainScreen(Screen):
    DEFAULT_CSS = """
    #filter-row { height: auto; }
    #filter { width: 1fr; }
    #filter-count { width: auto; height: 1; padding: 0 1; background: $boost; color: $text-muted; }
    #filter-count.-none { color: $warning; text-style: bold; }
    #layer-summary { display: none; width: 1fr; height: 1fr; border-left: vkey $foreground 20%; padding: 0 1; }
    #main.-layer-detail #detail { display: none; }
    #main.-layer-detail #layer-summary { display: block; }
    #main.-view-layers #layer-summary, #main.-view-all.-narrow #layer-summary { display: none; }
    """

    # focus is given by hand: the first focusable widget (the filter box) must never take keys unseen
    AUTO_FOCUS = ""

    BINDINGS = [
        # first, so that it stays in the footer at 80 columns (the App's q does the same elsewhere)
        Binding("q", "app.quit", "Quit", id="main.quit", tooltip="leave imatui"),
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
        Binding("c", "convergence", "Converge", show=False, id="convergence",
                tooltip="convergence over the checkpoints of a running collection or of snapshot files"),
        Binding("x", "experts", "Experts", id="experts",
                tooltip="MoE: the expert map, layer × expert (dead and rare experts, coverage)"),
    ]

    view: reactive[str] = reactive("all")

    def __init__(self, open_file: OpenFile, plan: OpenPlan) -> None:
        super().__init__(id="main-screen")
        self.open_file = open_file
        self.plan = plan
        self.browse_root = plan.browse_root
        self.imatrix: Imatrix | None = None  # what is on screen (the OpenFile's last DataLoaded)
        self.report: StatsReport | None = None
        self.shown_path: str | None = None
        self.selected_name: str | None = None
        self.open_scheduled = False
        self.load_started: float | None = None
        self.table_filled_at: float | None = None

    # -- composition ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield InfoBar(id="info")
        with Horizontal(id="body"):
            if self.plan.browse:
                yield ImatrixTree(self.browse_root.resolve(), id="browser")
            # otherwise the browser is mounted when first shown (b): listing a folder checks the
            # bytes of every candidate file, work that must not slow down the first load
            with MainView(id="main", classes="-empty"):
                with Horizontal(id="filter-row"):
                    box = Input(placeholder="filter tensor names: text or regex (Enter keeps, Esc clears)",
                                id="filter")
                    box.display = False  # from the start: an invisible box must never take keys
                    yield box
                    count = Static("", id="filter-count")
                    count.display = False
                    yield count
                yield Static("", id="placeholder")
                with ContentSwitcher(initial="tensors", id="tables"):
                    yield TensorTable(id="tensors")
                    yield LayerTable(id="layers")
                with Horizontal(id="lower"):
                    yield LayerSparklines(id="sparklines")
                    yield DetailPane(id="detail")
                    yield Static("", id="layer-summary")
        footer = Footer()
        footer.compact = True  # every binding fits on 80 columns
        yield footer

    def on_mount(self) -> None:
        info = self.query_one(InfoBar)
        self.apply_layout()
        path = self.plan.initial
        if path is None:
            info.path = str(self.browse_root)
            info.state = "choose an imatrix file in the browser (Enter opens it)"
            self.query_one(DetailPane).clear("no file open")
            self.placeholder(f"{self.browse_root.resolve()}\n\nchoose an imatrix file in the browser "
                             "(Enter opens it)")
            self.query_one("#browser").focus()
            return
        info.path = path
        if not Path(path).exists():
            self.set_live_status(f"waiting for {Path(path).name}")
            self.query_one(DetailPane).clear(f"{path} does not exist yet")
            self.placeholder(f"waiting for {path}\n\nit opens when it appears")
            self.open_file.open(path, series=self.plan.series)
        else:
            # paint the first frame before the loader thread competes for the GIL
            self.open_scheduled = True
            self.call_after_refresh(self._open_initial, path)

    def _open_initial(self, path: str) -> None:
        self.open_scheduled = False
        if self.open_file.path is None:
            self.open_path(path, series=self.plan.series)

    @property
    def tensor_table(self) -> TensorTable:
        return self.query_one("#tensors", TensorTable)

    @property
    def layer_table(self) -> LayerTable:
        return self.query_one("#layers", LayerTable)

    @property
    def current_table(self) -> str:
        """"tensors" or "layers": the table in front."""
        return str(self.query_one("#tables", ContentSwitcher).current)

    @property
    def active_table(self) -> StatsTable:
        return self.query_one(f"#{self.current_table}", StatsTable)

    def placeholder(self, text: str) -> None:
        """What the table area says while there is no table."""
        self.query_one("#placeholder", Static).update(text)

    def set_live_status(self, status: str) -> None:
        for info in self.query(InfoBar):  # query: the header timer can tick while the screen closes
            info.live = status

    # -- opening -------------------------------------------------------------------------------
    def open_path(self, path: str | Path, *, series: list[str] | None = None) -> None:
        """Load a file in place of the current one (cursor, sort and filter are kept)."""
        path = str(path)
        info = self.query_one(InfoBar)
        info.path = path
        info.state = "loading…"
        if self.report is None:
            # a static note, not Textual's animated LoadingIndicator: its 60 fps repaints take GIL
            # time from the statistics threads (about 15% on the 1 GB file); the header counts
            self.placeholder(f"reading {Path(path).name} …\n\nthe table fills in when its statistics "
                             "are computed")
        self.load_started = time.perf_counter()
        self.open_file.open(path, series=series or (), force=True)

    # -- what the open file says (routed here by the App) ---------------------------------------
    def data_loaded(self, message: DataLoaded) -> None:
        if message.path != self.open_file.path:
            return  # a file the user has since moved away from
        self.imatrix, self.report, self.shown_path = message.imatrix, message.report, message.path
        self.query_one("#main").remove_class("-empty")
        info = self.query_one(InfoBar)
        info.path = message.path
        info.state = ""
        info.report = message.report
        self.sub_title = Path(message.path).name
        with self.app.batch_update():
            self.tensor_table.show_report(message.report)
            self.layer_table.show_report(message.report)
            self.query_one(LayerSparklines).show_report(message.report)
        focused = self.focused
        if (focused is None or not focused.display) and self.is_current:
            self.active_table.focus()
        if self.load_started is not None and self.table_filled_at is None:
            self.table_filled_at = time.perf_counter()
        self._show_filter_count()
        self._select(self.tensor_table.selected_key, force=True)
        if self.current_table == "layers":
            self._show_layer(self.layer_table.selected_key)
        self.refresh_bindings()  # the experts key shows for MoE files
        if self.browser is not None:
            self.browser.set_open_file(message.path)

    def writing(self, path: str) -> None:
        """An empty or half-written file: no error, it opens when complete."""
        if path != self.open_file.path:
            return
        name = Path(path).name
        info = self.query_one(InfoBar)
        if self.report is None:
            info.state = ""
            self.placeholder(f"{name} is being written…\n\nit opens when it is complete")
            self.query_one(DetailPane).clear(f"{name} is being written…")
        else:
            info.state = f"{name} is being written… (it opens when complete)"

    def waiting(self, path: str) -> None:
        if path != self.open_file.path or self.report is not None:
            return
        self.query_one(InfoBar).state = ""
        self.placeholder(f"waiting for {path}\n\nit opens when it appears")

    def progress(self, message: LoadProgress) -> None:
        if message.path == self.open_file.path:
            self.query_one(InfoBar).state = f"statistics {message.done}/{message.total}…"

    def load_failed(self, message: LoadFailed) -> None:
        info = self.query_one(InfoBar)
        if self.report is not None and self.shown_path is not None:
            info.path = self.shown_path  # what is on screen stays, and says which file it is from
            info.state = ""
        elif message.path == self.open_file.path:
            info.state = "cannot open"
            self.placeholder(f"cannot open {message.message}\n\nb: choose another file")

    def channels_ready(self, message: ChannelsReady) -> None:
        if message.path != self.shown_path or message.name != self.selected_name or self.report is None:
            return
        t = self.report.tensor(message.name)
        if t is not None:
            self.query_one(DetailPane).show_channels(t, message.values, message.counts, message.summary)

    def channels_unavailable(self, message: ChannelsUnavailable) -> None:
        if message.path == self.shown_path and message.name == self.selected_name:
            self.query_one(DetailPane).unavailable("file is being rewritten…")

    # -- selection and detail ----------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#tensors")
    def _tensor_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._select(None if event.row_key is None else str(event.row_key.value))

    @on(DataTable.RowSelected, "#tensors")
    def _tensor_selected(self, event: DataTable.RowSelected) -> None:
        # Enter on a tensor: its detail pane in full, and back
        self.view = "all" if self.view == "detail" else "detail"

    @on(DataTable.RowHighlighted, "#layers")
    def _layer_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and self.current_table == "layers":
            self.query_one(LayerSparklines).select_layer(int(str(event.row_key.value)))
            self._show_layer(str(event.row_key.value))

    def _show_layer(self, key: str | None) -> None:
        """The per-layer table drives the lower right pane: the layer's summary and its tensors."""
        summary = self.query_one("#layer-summary", Static)
        layer = None if key is None or self.report is None else next(
            (row for row in self.report.layers if str(row.layer) == key), None)
        if layer is None:
            summary.update(Text("no layer selected", style="dim"))
            return
        text = Text.assemble((f"layer {layer.layer}", "bold"),
                             f" · {layer.n_tensors} tensors · μΣ {layer.sum:.2f} · ZD {layer.zd * 100:.2f}%")
        if layer.cossim is not None:
            text.append(f" · CosSim {layer.cossim:.4f}")
        text.append("\n\n")
        rows = sorted((t for t in self.report.tensors if t.layer == layer.layer), key=lambda t: -t.sum)
        width = max((len(t.kind) for t in rows), default=4)
        text.append(f"{'kind':<{width}}  {'Σ(Act²)':>12}  {'max/μ':>9}  {'CosSim':>7}  {'dead':>5}\n", style="bold")
        for t in rows:
            ratio = f"{t.max / t.mean:9.1f}" if t.mean else f"{'–':>9}"
            cos = f"{t.cossim:7.4f}" if t.cossim is not None else f"{'–':>7}"
            text.append(f"{t.kind:<{width}}  {t.sum:12.2f}  {ratio}  {cos}  {t.dead:5d}\n")
        summary.update(text)

    def _select(self, name: str | None, force: bool = False) -> None:
        if name == self.selected_name and not force:
            return
        self.selected_name = name
        report, detail = self.report, self.query_one(DetailPane)
        t = report.tensor(name) if (report is not None and name is not None) else None
        if t is None or name is None:
            detail.clear("no tensor selected" if report is not None else "")
            return
        self.query_one(LayerSparklines).select_layer(t.layer)
        detail.show_tensor(t)
        self.open_file.read_channels(self.shown_path, self.imatrix, name)

    # -- browser -------------------------------------------------------------------------------
    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.open_path(str(event.path))
        self._focus_table()

    @property
    def browser(self) -> ImatrixTree | None:
        found = self.query("#browser")
        return found.first(ImatrixTree) if found else None

    def show_browser(self, show: bool = True) -> ImatrixTree | None:
        browser = self.browser
        if browser is None and show:
            browser = ImatrixTree(self.browse_root.resolve(), id="browser")
            browser.set_open_file(self.shown_path)  # marked in the listing
            self.query_one("#body").mount(browser, before="#main")
        if browser is not None:
            browser.display = show
            browser.focus() if show else self._focus_table()
        return browser

    def action_toggle_browser(self) -> None:
        browser = self.browser
        self.show_browser(browser is None or not browser.display)

    # -- filter ---------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if self.focused is box:  # a "/" typed in the box (the binding goes first): it is text there
            box.insert_text_at_cursor("/")
            return
        box.display = True
        self._show_filter_count()
        self.show_table("tensors", focus=False)
        # now, not later (focus() defers): keys typed or pasted right after "/" belong to the box
        self.set_focus(box)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        matcher, problem = name_matcher(event.value)
        self.tensor_table.set_filter(matcher)
        event.input.set_class(problem is not None, "-invalid-regex")
        event.input.tooltip = problem
        self._show_filter_count()

    def _show_filter_count(self) -> None:
        """"N of M tensors" beside a visible filter; "no tensor matches" (and an empty detail pane)."""
        box = self.query_one("#filter", Input)
        count = self.query_one("#filter-count", Static)
        count.display = box.display
        if self.report is None:
            count.update("no file yet" if box.value else "")
            return
        shown, total = self.tensor_table.row_count, len(self.report.tensors)
        none = bool(box.value) and shown == 0
        count.set_class(none, "-none")
        count.update(f"no tensor matches (of {total})" if none else f"{shown} of {total} tensors")
        if none:
            self.selected_name = None
            self.query_one(DetailPane).clear(f"no tensor matches {box.value!r}")

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.display = False
            self._show_filter_count()
        self._focus_table()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.value:
            box.value = ""
            self.tensor_table.set_filter(name_matcher("")[0])
        box.display = False
        self._show_filter_count()
        self._focus_table()

    def _focus_table(self) -> None:
        """The table in front, when there is one on screen; otherwise nothing (keys go to the bindings)."""
        if self.report is not None:
            self.active_table.focus()
        else:
            self.set_focus(None)

    # -- sorting, tables, metrics, views -----------------------------------------------------
    def show_table(self, which: str, focus: bool = True) -> None:
        self.query_one("#tables", ContentSwitcher).current = which
        self.query_one("#main").set_class(which == "layers", "-layer-detail")
        if which == "layers":
            self._show_layer(self.layer_table.selected_key)
        if focus:
            self._focus_table()
        # the layer marker follows the table in front
        sparklines = self.query_one(LayerSparklines)
        if which == "layers":
            key = self.layer_table.selected_key
            sparklines.select_layer(None if key is None else int(key))
        elif self.report is not None and self.selected_name is not None:
            t = self.report.tensor(self.selected_name)
            sparklines.select_layer(None if t is None else t.layer)

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        if column not in {c.key for c in self.active_table.spec}:
            self.show_table("tensors")
        self.active_table.sort_by(column, reverse)

    def set_metric(self, key: str) -> None:
        self.query_one(LayerSparklines).set_metric(key)

    def action_next_sort(self) -> None:
        self.active_table.cycle_sort(1)

    def action_previous_sort(self) -> None:
        self.active_table.cycle_sort(-1)

    def action_reverse_sort(self) -> None:
        self.active_table.reverse_sort()

    def action_toggle_table(self) -> None:
        self.show_table("layers" if self.current_table == "tensors" else "tensors")

    def action_next_metric(self) -> None:
        self.query_one(LayerSparklines).cycle_metric(1)

    def action_previous_metric(self) -> None:
        self.query_one(LayerSparklines).cycle_metric(-1)

    def action_cycle_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]

    def watch_view(self, view: str) -> None:
        if not self.is_mounted:
            return
        if view == "layers":
            self.show_table("layers")
        elif view in ("detail", "table") and self.current_table == "layers":
            self.show_table("tensors")
        self.apply_layout()

    def apply_layout(self) -> None:
        if not self.is_mounted:
            return
        main = self.query_one("#main")
        for v in VIEWS:
            main.set_class(v == self.view, f"-view-{v}")
        main.set_class(self.app.size.width < NARROW, "-narrow")
        main.set_class(self.app.size.height < 30, "-short")

    # -- other screens -------------------------------------------------------------------------
    def action_diff(self) -> None:
        browser = self.browser
        other = browser.highlighted_file if browser is not None and browser.display else None
        if self.shown_path is None or self.report is None:
            self.notify("open a file first", severity="warning")
            return
        if other is None:
            self.notify("select the other file in the browser, then press d", severity="warning")
            self.show_browser(True)
            return
        self.app.push_screen(DiffScreen(self.shown_path, str(other), chunk_size=self.open_file.chunk_size))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "experts":  # shown (and active) only for a file with expert tensors
            return self.imatrix is not None and any(e.n_mat > 1 for e in self.imatrix.entries.values())
        return True

    def action_experts(self) -> None:
        if self.imatrix is None:
            self.notify("open a file first", severity="warning")
            return
        if not any(e.n_mat > 1 for e in self.imatrix.entries.values()):
            self.notify("no expert tensors in this file (a dense model, or a legacy .dat without "
                        "per-expert counts)", severity="warning")
            return
        self.app.push_screen(ExpertsScreen(self.imatrix, self.report))

    def action_convergence(self) -> None:
        def chosen(name: str | None) -> None:
            if name is not None:
                self.show_tensor(name)

        self.app.push_screen(ConvergenceScreen(self.open_file), chosen)

    def show_tensor(self, name: str) -> None:
        """Put the tensor table's cursor on `name` (the convergence screen's Enter)."""
        table = self.tensor_table
        try:
            row = table.get_row_index(name)
        except Exception:  # noqa: BLE001 - RowDoesNotExist: hidden by the filter
            self.notify(f"{name} is hidden by the filter (Esc clears it)", severity="warning")
            return
        self.show_table("tensors")
        table.move_cursor(row=row)
