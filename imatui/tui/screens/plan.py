"""The plan screen: one quantization type per tensor for the open imatrix and a model, live.

A thread worker reads the model and the imatrix, checks them against each other and measures the
errors (imatui.plan.probe: llama-quantize probes when it is there, gguf-py estimates otherwise,
cached next to the recipe); every budget change re-solves in another worker (the errors are kept, so
that is instant). The screen shows the budget, the predicted size and bits per weight, bits and
error share per layer as sparklines, and a table of every weight with its chosen type, bits per
weight and share of the total error. `w` writes the recipe for llama-quantize --tensor-type-file
(refusing to replace a file unless asked again with `W`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Sparkline, Static

from imatui.errors import ImatrixError
from imatui.plan.planner import Plan
from imatui.plan.qtypes import ggml_name

BPW_STEPS = {"small": 0.05, "large": 0.5}


@dataclass
class PlanProgress(Message):
    text: str


@dataclass
class PlanReady(Message):
    plan: Plan
    bpw: float

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PlanReady)


@dataclass
class PlanFailed(Message):
    message: str


class PlanScreen(Screen):
    DEFAULT_CSS = """
    PlanScreen { layout: vertical; }
    #plan-title { height: auto; padding: 0 1; background: $boost; }
    #plan-sparks { height: auto; }
    .plan-row { height: 1; padding: 0 1; }
    .plan-label { width: 14; }
    .plan-spark { width: 1fr; height: 1; }
    .plan-value { width: 10; text-align: right; }
    #plan-table { height: 1fr; }
    """

    BINDINGS = [
        Binding("plus,equals_sign", "budget(1, 'small')", "+bpw", id="plan.more", tooltip="raise the budget a little"),
        Binding("minus", "budget(-1, 'small')", "-bpw", id="plan.less", tooltip="lower the budget a little"),
        Binding("right_square_bracket", "budget(1, 'large')", "+0.5", id="plan.more_large",
                tooltip="raise the budget by 0.5 bits per weight"),
        Binding("left_square_bracket", "budget(-1, 'large')", "-0.5", id="plan.less_large",
                tooltip="lower the budget by 0.5 bits per weight"),
        Binding("w", "write(False)", "Write recipe", id="plan.write", tooltip="write the recipe file"),
        Binding("W", "write(True)", "Replace", show=False, id="plan.write_force"),
        Binding("escape", "close", "Back", id="plan.close"),
    ]

    def __init__(self, model_path: str | Path, imatrix_path: str | Path, *, recipe_path: str | Path,
                 bpw: float = 4.5, llama_quantize: str | None = None, chunk_size: int = 512) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.imatrix_path = Path(imatrix_path)
        self.recipe_path = Path(recipe_path)
        self.bpw = bpw
        self.llama_quantize = llama_quantize
        self.chunk_size = chunk_size
        self.plan: Plan | None = None
        self._inputs = None  # (model, imatrix, table) once measured

    def compose(self) -> ComposeResult:
        yield Static(Text("plan: reading the model and the imatrix…"), id="plan-title")
        with Vertical(id="plan-sparks"):
            with Horizontal(classes="plan-row"):
                yield Static("bits / layer", classes="plan-label")
                yield Sparkline([], id="plan-bits", classes="plan-spark")
                yield Static(id="plan-bits-value", classes="plan-value")
            with Horizontal(classes="plan-row"):
                yield Static("error / layer", classes="plan-label")
                yield Sparkline([], id="plan-error", classes="plan-spark")
                yield Static(id="plan-error-value", classes="plan-value")
        yield DataTable(id="plan-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#plan-table", DataTable).add_columns("tensor", "type", "bpw", "error %", "bytes")
        self.measure()

    # --- workers ---------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def measure(self) -> None:
        from imatui.formats import load
        from imatui.plan.model import read_source_model
        from imatui.plan.planner import validate
        from imatui.plan.probe import find_llama_quantize, measure
        from imatui.plan.qtypes import DEFAULT_LADDER, GGUF_PY_QUANTIZES

        try:
            model = read_source_model(self.model_path)
            imatrix = load(self.imatrix_path, chunk_size=self.chunk_size)
            validate(model, imatrix)
            exe = find_llama_quantize(self.llama_quantize)
            types = DEFAULT_LADDER if exe else tuple(t for t in DEFAULT_LADDER if t in GGUF_PY_QUANTIZES)
            folder = self.recipe_path.parent if str(self.recipe_path.parent) else Path(".")
            table, _ = measure(model, imatrix, self.imatrix_path, folder / ".imatui-plan", exe=exe, types=types,
                               progress=lambda text: self.post_message(PlanProgress(text)))
        except (ImatrixError, OSError) as exc:
            self.post_message(PlanFailed(str(exc)))
            return
        self._inputs = (model, imatrix, table)
        self._solve(self.bpw)

    @work(thread=True, exclusive=True, group="solve", exit_on_error=False)
    def solve(self, bpw: float) -> None:
        self._solve(bpw)

    def _solve(self, bpw: float) -> None:
        from imatui.plan.planner import make_plan

        model, imatrix, table = self._inputs
        try:
            plan = make_plan(model, imatrix, self.imatrix_path, table, bpw=bpw, budget_text=f"{bpw:.2f} bpw")
        except ImatrixError as exc:
            self.post_message(PlanFailed(str(exc)))
            return
        self.post_message(PlanReady(plan, bpw))

    # --- messages --------------------------------------------------------------------------------

    @on(PlanProgress)
    def _progress(self, message: PlanProgress) -> None:
        self.query_one("#plan-title", Static).update(Text(f"plan: {message.text}…"))

    @on(PlanFailed)
    def _failed(self, message: PlanFailed) -> None:
        self.notify(message.message, severity="error", timeout=8)
        if self.plan is None:
            self.query_one("#plan-title", Static).update(Text(f"plan: {message.message}", style="bold red"))

    @on(PlanReady)
    def _ready(self, message: PlanReady) -> None:
        if message.bpw != self.bpw:
            return  # an older budget's answer, overtaken by a newer key press
        self.plan = plan = message.plan
        total = plan.total_error or 1.0
        title = Text("plan ", style="bold")
        title.append(f"{plan.model.path.name}  budget {plan.budget_text}  →  {plan.file_bytes / 1e6:.2f} MB, "
                     f"{plan.bpw:.3f} bpw, error {plan.total_error:.4g}")
        if plan.source != "llama-quantize":
            title.append("  ESTIMATES (no llama-quantize)", style="bold yellow")
        self.query_one("#plan-title", Static).update(title)

        layers = sorted({t.layer for t in plan.tensors if t.layer is not None})
        bits, errs = [], []
        for layer in layers:
            ts = [t for t in plan.tensors if t.layer == layer]
            bits.append(sum(t.chosen.bytes for t in ts) * 8 / max(1, sum(t.n_elements for t in ts)))
            errs.append(100 * sum(t.chosen.error for t in ts) / total)
        self.query_one("#plan-bits", Sparkline).data = bits
        self.query_one("#plan-error", Sparkline).data = errs
        self.query_one("#plan-bits-value", Static).update(f"{max(bits):.2f} max" if bits else "")
        self.query_one("#plan-error-value", Static).update(f"{max(errs):.1f}% max" if errs else "")

        table = self.query_one("#plan-table", DataTable)
        keep = table.cursor_row
        table.clear()
        for t in sorted(plan.tensors, key=lambda t: -t.chosen.error):
            table.add_row(t.name, ggml_name(t.chosen.type), f"{t.chosen.bytes * 8 / t.n_elements:.2f}",
                          f"{100 * t.chosen.error / total:.2f}", f"{t.chosen.bytes:,}", key=t.name)
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1))

    # --- actions ---------------------------------------------------------------------------------

    def action_budget(self, direction: int, size: str) -> None:
        if self._inputs is None:
            return
        self.bpw = round(max(0.5, self.bpw + direction * BPW_STEPS[size]), 3)
        self.solve(self.bpw)

    def action_write(self, force: bool) -> None:
        from imatui.plan.recipe import tensor_type_lines, write_text_atomic

        if self.plan is None:
            self.notify("no plan yet", severity="warning")
            return
        chosen = self.plan.types()
        try:
            write_text_atomic(self.recipe_path, "\n".join(tensor_type_lines(chosen, list(chosen))) + "\n",
                              force=force)
        except ImatrixError as exc:
            text = f"{self.recipe_path}: already exists (W replaces it)" if "already exists" in str(exc) else str(exc)
            self.notify(text, severity="error")
            return
        except OSError as exc:
            self.notify(f"{self.recipe_path}: {exc.strerror or exc}", severity="error")
            return
        self.notify(f"wrote {self.recipe_path} ({len(chosen)} tensors, {self.plan.bpw:.3f} bpw)")

    def action_close(self) -> None:
        if len(self.app.screen_stack) > 1 and not isinstance(self.app, PlanApp):
            self.app.pop_screen()
        else:
            self.app.exit()


class PlanApp(App[None]):
    """The plan screen on its own (imatui plan ... --view)."""

    TITLE = "imatui plan"

    def __init__(self, screen: PlanScreen) -> None:
        super().__init__()
        self._plan_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self._plan_screen)
