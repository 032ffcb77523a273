from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# the files llama-imatrix --show-statistics was run on, with its printed output beside them
REFERENCE_FILES = [
    "smollm2-prose.imatrix.gguf",
    "smollm2-code.imatrix.gguf",
    "smollm2-merged.imatrix.gguf",
    "smollm2-prose.imatrix.dat",
]


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def prose() -> Path:
    return FIXTURES / "smollm2-prose.imatrix.gguf"


@pytest.fixture(params=["numpy", "compiled"])
def compare_path(request, monkeypatch) -> str:
    """The diff's compare pass in numpy (what small diffs take) or in numba's compiled loops (big ones),
    whatever the size of the test's files."""
    from imatui.stats import diff

    monkeypatch.setattr(diff, "COMPILED_MIN_PAIRS", 0 if request.param == "compiled" else 1 << 62)
    return request.param


async def wait_until(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until condition() holds (or fail after timeout seconds)."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


def count_forks(monkeypatch) -> list[int]:
    """The pids of the children forked from here on; and let the engine fork although earlier tests
    (apps, watchers) may have left threads."""
    import os
    import threading

    monkeypatch.setattr(threading, "active_count", lambda: 1)
    pids: list[int] = []
    real = os.fork

    def fork():
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids
