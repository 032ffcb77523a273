"""How a flagged number stands out, with colour and without.

Under NO_COLOR Textual turns every colour into a grey, so "bold red" on the dark theme reads as dark
grey on dark grey. Without colour a flag is drawn with attributes that survive: reverse video for the
strong one, bold underline for the mild one.
"""

from __future__ import annotations

from textual.app import App

STRONG, MILD = 2, 1
_COLOUR = {STRONG: "bold red", MILD: "yellow"}
_MONO = {STRONG: "bold reverse", MILD: "bold underline"}


def flag_style(app: App | None, level: int) -> str:
    """The style of a cell flagged at `level` (0: not flagged) in this app's colour mode."""
    if not level:
        return ""
    return (_MONO if getattr(app, "no_color", False) else _COLOUR)[level]
