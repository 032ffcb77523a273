"""Render the app without a terminal and save an SVG: `imatui screenshot`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from imatui.tui.svg import save_svg

VIEWS = ("table", "layers", "detail", "diff")


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
        failures.extend(app.load_errors)
        save_svg(app, filename=out.name, path=str(out.parent or Path(".")))
    if failures:
        from imatui.errors import ImatrixError

        raise ImatrixError(failures[0])


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
    asyncio.run(_render(str(path), out, size, view, diff_with))
    return out
