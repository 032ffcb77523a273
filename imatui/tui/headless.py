"""Render the app without a terminal and save an SVG: `imatui screenshot`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from imatui.tui.svg import save_svg

VIEWS = ("table", "layers", "detail", "diff", "experts")


async def _render(path: str, out: Path, size: tuple[int, int], view: str, diff_with: str | None) -> None:
    from imatui.tui.app import make_app

    app = make_app([path], diff_with=diff_with if view == "diff" else None)
    failures: list[str] = []
    async with app.run_test(size=size) as pilot:
        await app.wait_for_data()
        await pilot.pause()
        if view == "layers":
            app.set_view("layers")
        elif view == "detail":
            app.set_view("detail")
        await pilot.pause()
        await app.wait_for_data()  # the detail pane's channel reader
        await pilot.pause()
        if view == "experts":
            await _show_experts(app, pilot)
        failures.extend(app.load_errors)
        save_svg(app, filename=out.name, path=str(out.parent or Path(".")))
    if failures:
        from imatui.errors import ImatrixError

        raise ImatrixError(failures[0])


async def _show_experts(app, pilot) -> None:
    """The expert map, with its cursor's expert read and drawn."""
    from imatui.errors import ImatrixError
    from imatui.tui.screens.experts import ExpertsScreen

    if not app.main.check_action("experts", ()):
        raise ImatrixError(f"{app.current_path}: no expert tensors (--view experts is for MoE files)")
    app.main.action_experts()
    for _ in range(2000):
        screen = app.screen
        if isinstance(screen, ExpertsScreen) and screen.detail is not None:
            break
        await asyncio.sleep(0.01)
    await pilot.pause()


def render_screenshot(path: str | Path, out_svg: str | Path, size: tuple[int, int] = (120, 40),
                      view: str = "table", diff_with: str | None = None) -> Path:
    """Open `path` headless at `size`, show `view`, write the SVG to `out_svg`, return its path."""
    from imatui.errors import ImatrixError
    from imatui.formats import load

    if view not in VIEWS:
        raise ImatrixError(f"unknown view {view!r}; one of: {', '.join(VIEWS)}")
    if view == "diff" and not diff_with:
        raise ImatrixError("--view diff needs --diff-with FILE")
    load(path)  # a bad file fails here, with the formats layer's one-line message
    if diff_with:
        load(diff_with)
    out = Path(out_svg)
    # plotext sizes its figures no larger than the terminal it believes it runs in (shutil's
    # get_terminal_size: COLUMNS and LINES, else 80x24); headless, that is the screenshot's size
    os.environ["COLUMNS"], os.environ["LINES"] = str(size[0]), str(size[1])
    asyncio.run(_render(str(path), out, size, view, diff_with))
    return out
