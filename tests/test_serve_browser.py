"""`imatui serve` in a real headless browser: Debian's chromium, driven through its chromedriver.

The page draws the terminal with xterm.js's WebGL (or canvas) renderer, so its rows are pixels, not
DOM text. The test reads xterm's own screen buffer, the cells those pixels are drawn from: a script
run before the page's own catches the Terminal object when textual-serve's page stores it
(`this.terminal = new Terminal(...)`). Everything listens on 127.0.0.1 only. Without chromium,
chromedriver or selenium the test is skipped, with the reason. With IMATUI_SERVE_SCREENSHOT=FILE.png
it also saves what the browser shows (screenshots/make.sh makes screenshots/serve-browser.png so).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"
CODE = FIXTURES / "smollm2-code.imatrix.gguf"
CHROMIUM = os.environ.get("IMATUI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("IMATUI_CHROMEDRIVER") or shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the 'test' extra)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install "
                                       "chromium chromium-driver); .ci/run installs them")

CATCH_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {configurable: true, set(value) {
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
    if (value && value.buffer) { window.imatuiTerminal = value; }
}});
"""
SCREEN_TEXT = """
const term = window.imatuiTerminal;
if (!term) { return null; }
const buffer = term.buffer.active, rows = [];
for (let y = 0; y < term.rows; y++) {
    rows.push(buffer.getLine(buffer.viewportY + y).translateToString(true));
}
return rows.join("\\n");
"""


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def run_file(tmp_path) -> Path:
    """The file of a collection: prose's imatrix, written a minute ago (so not being written now)."""
    path = tmp_path / "run" / "run.imatrix.gguf"
    path.parent.mkdir()
    shutil.copyfile(PROSE, path)
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


@pytest.fixture
def server(tmp_path, run_file):
    proc = subprocess.Popen([sys.executable, "-m", "imatui", "serve", str(run_file), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        first = proc.stdout.readline()
        match = re.match(r"imatui serve: \S+ on (http://127\.0\.0\.1:\d+) ", first)
        assert match, first
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_TERMINAL})
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow",
                                                                "downloadPath": str(downloads)})
        driver.downloads = downloads
        yield driver
    finally:
        driver.quit()


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    # keys go to xterm's input element, as a click into the terminal would focus it
    driver.execute_script("document.querySelector('.xterm-helper-textarea').focus()")
    ActionChains(driver).send_keys(key).perform()


def test_explorer_in_the_browser(server, browser, run_file, tmp_path):
    browser.get(server + "/")

    def screen() -> str:
        return browser.execute_script(SCREEN_TEXT) or ""

    def screen_showing(text: str):
        return lambda: (lambda s: s if text in s else None)(screen())

    # the app (a process started for this connection) loads the file and fills the tensor table
    wait_for(screen_showing("blk.29.ffn_down.weight"), 60, "the tensor table")
    # the page's terminal takes the keyboard focus, as a click on it gives: the footer lists the keys
    browser.execute_script("window.imatuiTerminal.focus()")
    first = wait_for(screen_showing("t Layers"), 20, "the footer's keys")
    lines = first.splitlines()
    assert "run.imatrix.gguf" in lines[0] and "210 tensors" in lines[0]
    # the first view: largest Σ first (llama-imatrix's Σ and Max of blk.29.ffn_down)
    assert re.search(r"^\s+29\s+ffn_down\s+20573\.37\s+1087\.1737\b", lines[2]), lines[2]
    assert "t Layers" in first, first  # the footer
    if picture := os.environ.get("IMATUI_SERVE_SCREENSHOT"):  # screenshots/make.sh: the README's picture
        wait_for(screen_showing("channels sorted"), 30, "the charts")  # they fill in after the table
        wait_for(screen_showing("ffn_up"), 30, "the per-layer sparklines")
        time.sleep(1)  # the page's "connecting" dialog fades out in 0.3 s, the charts draw
        browser.save_screenshot(picture)

    # live following: the collection writes its next state (a new file renamed over the old, as
    # imatui collect does): the same row now holds the code imatrix's numbers, as llama.cpp printed them
    shutil.copyfile(CODE, run_file.with_suffix(".tmp"))
    os.replace(run_file.with_suffix(".tmp"), run_file)
    updated = wait_for(screen_showing("21992.80"), 30, "the reloaded file")
    assert re.search(r"^\s+29\s+ffn_down\s+21992\.80\s+2006\.0322\b", updated.splitlines()[2]), updated

    # `t` switches to the per-layer table: the screen changes to layer rows
    press(browser, "t")
    layers = wait_for(screen_showing("μCosSim"), 20, "the layer table")
    rows = layers.splitlines()
    assert re.search(r"^\s+0\s+16\.42\s+1\.6426%\s+0\.0000\s+7\s+4992\b", rows[2]), rows[2]  # llama's layer 0
    assert not re.search(r"ffn_down\s+21992\.80", layers)

    # `p` in the browser delivers the SVG screenshot as a download, not a file on the server
    press(browser, "p")
    svg = wait_for(lambda: next(browser.downloads.glob("imatui-run.imatrix.gguf-*.svg"), None),
                   20, "the screenshot download")
    text = svg.read_text(encoding="utf-8")
    assert text.startswith("<svg") and "run.imatrix.gguf" in text and "μCosSim" in text
    assert not list(tmp_path.glob("*.svg")), "the screenshot was written into the server's folder"
    wait_for(screen_showing("Saved screenshot"), 20, "the app's notice that the download was taken")
