"""The `p` key's SVG screenshot: a file in the current folder, or a download in the browser.

Textual's own screenshot action saves into a Downloads folder, which a server often lacks; in a
terminal we write into the current folder instead. Under `imatui serve` (App.is_web) the app runs on
the server, so a file there would be lost on the person in the browser: the SVG goes to the browser
as a download (Textual's deliver_text, which textual-serve turns into a /download/ URL), and Textual
says "Saved screenshot" once the browser has fetched it.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from textual.app import App

from imatui.tui.svg import export_svg, save_svg


def screenshot_filename(current_path: str | None) -> str:
    stem = Path(current_path).name if current_path else "imatui"
    return f"imatui-{stem}-{time.strftime('%Y%m%d-%H%M%S')}.svg"


def save_or_deliver(app: App, current_path: str | None) -> str | None:
    """Screenshot the app: deliver it to the browser (web) or save it here; returns the saved path."""
    filename = screenshot_filename(current_path)
    if app.is_web:
        # name="screenshot": Textual's own DeliveryComplete / DeliveryFailed handlers notify the user
        app.deliver_text(io.StringIO(export_svg(app)), save_filename=filename,
                         open_method="download", mime_type="image/svg+xml", name="screenshot")
        return None
    try:
        saved = save_svg(app, filename=filename, path=os.getcwd())
    except OSError as exc:
        app.notify(f"cannot save the screenshot: {exc}", severity="error")
        return None
    app.notify(f"saved {saved}", title="screenshot")
    return saved


__all__ = ["save_or_deliver", "screenshot_filename"]
