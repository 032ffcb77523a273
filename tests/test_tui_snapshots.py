"""SVG snapshots of the main views (pytest-textual-snapshot). After an intended change of the look,
refresh them with `pytest tests/test_tui_snapshots.py --snapshot-update` and look at the diff."""

from __future__ import annotations

import pytest

from conftest import FIXTURES

from imatui.live.state import LiveClock
from imatui.tui.app import make_app

PROSE = str(FIXTURES / "smollm2-prose.imatrix.gguf")


@pytest.fixture(autouse=True)
def _fixed_age(monkeypatch):
    """The header shows the age of the file's last write; a snapshot must not depend on the clock."""
    monkeypatch.setattr(LiveClock, "age", lambda self, now=None: 754.0 if self.writes else None)


async def _loaded(pilot) -> None:
    await pilot.app.wait_for_data()
    await pilot.pause()


def test_main_view(snap_compare):
    assert snap_compare(make_app([PROSE]), terminal_size=(120, 40), run_before=_loaded)


def test_layers_view_80x24(snap_compare):
    async def layers(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("v", "v", "m", "m", "m", "m")  # layers view, metric ZD
        await _loaded(pilot)

    assert snap_compare(make_app([PROSE]), terminal_size=(80, 24), run_before=layers)
