"""SVG screenshots that keep their spaces, and the screen as plain text.

Textual's SVG puts each run of text in its own <text> element, leading spaces included. XML collapses
those spaces unless the document says otherwise, so rsvg-convert and most renderers other than a
browser merge the columns ("24751.24" for "247  51.24"). `xml:space="preserve"` on the root
element keeps them.
"""

from __future__ import annotations

import io
import os
import re

from rich.console import Console
from textual.app import App

_SVG_OPEN = re.compile(r"<svg\b(?![^>]*xml:space)")


def preserve_spaces(svg: str) -> str:
    """The SVG with xml:space="preserve" on its root element (once)."""
    return _SVG_OPEN.sub('<svg xml:space="preserve"', svg, count=1)


def export_svg(app: App) -> str:
    return preserve_spaces(app.export_screenshot())


def save_svg(app: App, filename: str, path: str) -> str:
    """app.save_screenshot, with the spaces kept; returns the path written."""
    svg_path = os.path.expanduser(os.path.join(path or ".", filename))
    svg = export_svg(app)
    with open(svg_path, "w", encoding="utf-8") as out:
        out.write(svg)
    return svg_path


def screen_text(app: App) -> str:
    """What the screen shows, as plain text lines (tests read the screen through this)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)
