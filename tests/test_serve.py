"""`imatui serve` without a browser: bad input is one line and exit 2 before anything listens; the
server it starts answers on loopback only, refuses foreign Host names and foreign websockets."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from imatui.cli import main
from imatui.serve import announce, bind, is_loopback
from tests.conftest import FIXTURES

PROSE = FIXTURES / "smollm2-prose.imatrix.gguf"


@pytest.fixture
def no_serving(monkeypatch):
    """A bad-input test must fail, not hang, if serve got as far as serving."""
    def refuse(self, debug=False):
        raise AssertionError("serve started a server")
    monkeypatch.setattr("imatui.serve.ImatuiServer.serve", refuse)


def one_line_error(capsys, *args) -> str:
    rc = main(["serve", *map(str, args)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("imatui: "), err
    return err


def test_port_in_use(capsys, no_serving):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = one_line_error(capsys, PROSE, "--port", port)
    assert err == f"imatui: port {port} on 127.0.0.1 is in use (choose another with --port)\n"


def test_host_that_cannot_be_bound(capsys, no_serving):
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: no DNS, no network needed
    err = one_line_error(capsys, PROSE, "--host", "192.0.2.1", "--port", 0)
    assert err == "imatui: cannot listen on 192.0.2.1 port 0: Cannot assign requested address\n"


def test_missing_file_and_bad_port(capsys, tmp_path, no_serving):
    missing = tmp_path / "run.imatrix.gguf"
    err = one_line_error(capsys, missing)
    assert err.startswith(f"imatui: {missing}: no such file or folder")
    assert one_line_error(capsys, PROSE, "--port", 70000) == \
        "imatui: --port must be between 0 and 65535, not 70000\n"
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(PROSE), "--port", "http"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        "imatui: argument --port: invalid int value: 'http' (see imatui serve --help)\n"


def test_bad_input_in_a_real_process_has_no_traceback():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "imatui", "serve", str(PROSE), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"imatui: port {port} on 127.0.0.1 is in use (choose another with --port)\n"


def test_bind_port_zero_gives_one_port_on_every_address():
    sockets = bind("localhost", 0)
    try:
        addresses = [s.getsockname()[:2] for s in sockets]
        assert {h for h, _ in addresses} <= {"127.0.0.1", "::1"} and "127.0.0.1" in {h for h, _ in addresses}
        assert len({p for _, p in addresses}) == 1 and addresses[0][1] > 0
    finally:
        for s in sockets:
            s.close()


def test_loopback_and_the_warning():
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "127.8.9.1", "::1", "[::1]")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "gpu-box")] == [False] * 4
    text, warning = announce("run.gguf", [("127.0.0.1", 8123)])
    assert warning is None
    assert text.splitlines() == ["imatui serve: run.gguf on http://127.0.0.1:8123 (this machine only)",
                                 "  from another computer: ssh -L 8123:localhost:8123 THIS_HOST, "
                                 "then open http://localhost:8123",
                                 "  Ctrl+C stops it"]
    text, warning = announce("run.gguf", [("0.0.0.0", 8000)])
    assert text.startswith("imatui serve: run.gguf on http://0.0.0.0:8000\n")
    assert warning.startswith("imatui: warning: listening on 0.0.0.0, reachable from the network, "
                              "with NO authentication")
    assert "ssh -L 8000:localhost:8000 THIS_HOST" in warning and "\n" not in warning


# --- a running server (loopback, a free port) --------------------------------------------------

@pytest.fixture(scope="module")
def served():
    proc = subprocess.Popen([sys.executable, "-m", "imatui", "serve", str(PROSE), "--port", "0",
                             "--allow-host", "Quant.Example.org"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        match = re.match(r"imatui serve: \S+ on (http://127\.0\.0\.1:(\d+)) \(this machine only\)$", first)
        assert match, first
        yield match.group(1), int(match.group(2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_page_follows_the_address_the_browser_used(served):
    url, port = served
    status, page = get(url + "/")
    assert status == 200
    assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page
    # through `ssh -L 9000:localhost:PORT`, the browser asks for localhost:9000
    status, page = get(url + "/", host="localhost:9000")
    assert status == 200 and 'data-session-websocket-url="ws://localhost:9000/ws"' in page
    assert "<div>imatui smollm2-prose.imatrix.gguf</div>" in page


def test_foreign_host_names_are_refused(served):
    url, _ = served
    # a DNS name rebound to 127.0.0.1 by a web site must not reach the app
    status, body = get(url + "/", host="attacker.example:8000")
    assert (status, body) == (403, "this server answers only to localhost, not 'attacker.example'")
    # unless named with --allow-host: a reverse proxy (with a login) in front of it on this machine
    status, page = get(url + "/", host="quant.example.org")
    assert status == 200 and 'data-session-websocket-url="ws://quant.example.org/ws"' in page
    request = urllib.request.Request(url + "/", headers={"Host": "quant.example.org",
                                                         "X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request, timeout=20) as response:  # a proxy that ends TLS
        assert 'data-session-websocket-url="wss://quant.example.org/ws"' in response.read().decode()


def test_websocket_from_another_sites_page_is_refused(served):
    import aiohttp

    url, port = served

    async def handshake(origin: str) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"ws://127.0.0.1:{port}/ws?width=80&height=24",
                                              headers={"Origin": origin}) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(handshake("https://attacker.example")) == 403
    assert asyncio.run(handshake(f"http://127.0.0.1:{port}")) == 101


# --- the screenshot key under serve (the browser test sees the download itself) -----------------

async def test_screenshot_in_the_browser_is_delivered_not_written(tmp_path, monkeypatch):
    """Under textual-serve (is_web) `p` hands the SVG to deliver_text, which textual-serve turns into a
    download; nothing is written on the server. (Textual's headless driver would write a delivery
    into ~/Downloads, so the delivery itself is recorded here, not performed.)"""
    from imatui.tui.app import make_app

    monkeypatch.chdir(tmp_path)
    app = make_app([str(PROSE)])
    deliveries = []
    monkeypatch.setattr(type(app), "is_web", property(lambda self: True))
    monkeypatch.setattr(app, "deliver_text", lambda file, **kw: deliveries.append((file.read(), kw)))
    async with app.run_test(size=(120, 36)) as pilot:
        await app.wait_for_data()
        await pilot.press("p")
        await pilot.pause()
    assert len(deliveries) == 1
    svg, how = deliveries[0]
    assert svg.startswith("<svg") and "blk.29.ffn_down.weight" in svg  # the first row of Σ▼
    assert re.fullmatch(r"imatui-smollm2-prose\.imatrix\.gguf-\d{8}-\d{6}\.svg", how.pop("save_filename"))
    assert how == {"open_method": "download", "mime_type": "image/svg+xml", "name": "screenshot"}
    assert list(tmp_path.iterdir()) == []
