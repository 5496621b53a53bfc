"""End to end: start the app as ``annotate app`` does and load it in headless Chromium.

Streamlit draws the page in the browser from messages over a websocket, so
only a real browser shows that the served app renders. Chromium must be
installed (Debian: ``apt-get install -y chromium``); without it this test fails.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from annotate.cli.views import start_app
from annotate.views.app_logic import TITLE, AppConfig

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 60


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed to check that the app renders: install it "
                "(Debian/Ubuntu: `apt-get install -y chromium`) and run the tests again")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the app did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture
def served_app(tmp_path, models):
    browser = chromium()  # before starting anything
    port = free_port()
    config = AppConfig(str(models["language"]), (("de", str(models["emotion-de"])),
                                                 ("*", str(models["emotion-multi"]))))
    log = tmp_path / "app.log"
    with open(log, "wb") as handle:
        process = start_app(config, port, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log)
        yield browser, url, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def render(browser: str, url: str, profile: Path, budget_ms: int) -> str:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, timeout=90)
    return done.stdout.decode("utf-8", "replace")


def test_the_served_app_renders_in_a_browser(served_app):
    browser, url, tmp_path = served_app
    # Virtual time runs ahead of the server, which imports its modules on the first
    # session: the first loads may show the page still running; later ones are warm.
    deadline = time.monotonic() + START_TIMEOUT_S
    attempt, dom = 0, ""
    while TITLE not in dom and time.monotonic() < deadline:
        attempt += 1
        dom = render(browser, url, tmp_path / f"profile{attempt}", 30_000)
    assert TITLE in dom, f"after {attempt} loads:\n{dom[-2000:]}"
    # the options reached the app: the sidebar names the models it was given
    assert "emotion-de" in dom and "emotion-multi" in dom
    assert "Record or upload a clip" in dom
    print(f"rendered after {attempt} loads")
