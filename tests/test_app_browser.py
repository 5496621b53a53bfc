"""End to end: start the app as ``annotate app`` does and use it in headless Chromium.

Streamlit draws the page in the browser from messages over a websocket, so
only a real browser shows that the served app renders and that an upload
through the page's file control reaches the models. Chromium and its driver
must be installed (Debian: ``apt-get install -y chromium chromium-driver``)
and Selenium (the ``test`` extra); without them these tests fail.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from annotate.cli.views import start_app
from annotate.testing import speech_like
from annotate.views.app_logic import TITLE, AppConfig, ClipAnnotator, clip_summary

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 60
# The machine may be small and busy: the first session imports the models' runtime.
PAGE_TIMEOUT_S = 180
PREDICTION_TIMEOUT_S = 180
PROMPT = "Record or upload a clip"  # what the clip tab shows before a clip is given


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed to check that the app renders: install it "
                "(Debian/Ubuntu: `apt-get install -y chromium`) and run the tests again")


def chromedriver() -> str:
    found = shutil.which("chromedriver")
    if found:
        return found
    pytest.fail("chromedriver is needed to drive Chromium through Selenium: install it "
                "(Debian/Ubuntu: `apt-get install -y chromium-driver`) and run the tests again")


def served_config(models) -> AppConfig:
    """The models the served app is started with (and the tests annotate with)."""
    return AppConfig(str(models["language"]), (("de", str(models["emotion-de"])),
                                              ("*", str(models["emotion-multi"]))))


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
    config = served_config(models)
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
    # The title is drawn before the sidebar loads the models, so wait for all of it.
    # The options reached the app: the sidebar names the models it was given.
    expected = (TITLE, "emotion-de", "emotion-multi", PROMPT)
    deadline = time.monotonic() + START_TIMEOUT_S
    attempt, dom = 0, ""
    while not all(text in dom for text in expected) and time.monotonic() < deadline:
        attempt += 1
        dom = render(browser, url, tmp_path / f"profile{attempt}", 30_000)
    missing = [text for text in expected if text not in dom]
    assert not missing, f"{missing} not shown after {attempt} loads:\n{dom[-2000:]}"
    print(f"rendered after {attempt} loads")


# The clip tab as the browser draws it, read in one script so that a rerun cannot
# swap elements between reads: null while the script runs or elements are stale.
READ_CLIP_TAB = """
const app = document.querySelector('[data-testid="stApp"]');
const tab = document.querySelector('[data-testid="stFileUploader"]')?.closest('[role="tabpanel"]');
if (!app || !tab || app.dataset.testScriptState !== 'notRunning'
    || document.querySelector('[data-stale="true"]')) return null;
const text = (root, id) => root.querySelector(`[data-testid="${id}"]`)?.innerText.trim();
const metrics = [...tab.querySelectorAll('[data-testid="stMetric"]')].map(metric => {
  const column = metric.closest('[data-testid="stColumn"]');
  const caption = column?.querySelector('[data-testid="stCaptionContainer"]');
  return {label: text(metric, 'stMetricLabel'), value: text(metric, 'stMetricValue'),
          delta: text(metric, 'stMetricDelta'), caption: caption?.innerText.trim()};
});
const texts = id => [...tab.querySelectorAll(`[data-testid="${id}"]`)].map(e => e.innerText.trim());
return {metrics, alerts: texts('stAlert'), headings: texts('stHeading')};
"""


@pytest.fixture
def chrome(tmp_path):
    """Selenium's Chrome driver on the system's headless Chromium and chromedriver."""
    binary, driver_path = chromium(), chromedriver()  # before starting anything
    # Imported here so that a missing Selenium fails these tests with how to install it.
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("Selenium is needed to drive the browser: pip install 'selenium>=4.20' "
                    "(it is in the `test` extra) and run the tests again")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'selenium-profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout_s: float, what: str, log: Path):
    """Poll ``condition(driver)`` until it returns something truthy; fail with the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(condition)
    except TimeoutException:
        page = driver.execute_script("return document.body ? document.body.innerText : ''")
        pytest.fail(f"{what} did not happen within {timeout_s} s. The page shows:\n"
                    f"{page[-3000:]}\nThe app logged:\n{log.read_text()[-3000:]}")


def shown_prediction(driver):
    """The clip tab once it shows the clip's heading and metrics, or an alert but the prompt.

    Between the upload and the rerun the tab may briefly be drawn empty, so wait for
    content rather than for the prompt to go.
    """
    page = driver.execute_script(READ_CLIP_TAB)
    if page and ((page["headings"] and len(page["metrics"]) == 2)
                 or any(not a.startswith(PROMPT) for a in page["alerts"])):
        return page
    return None


def test_an_upload_through_the_browser_shows_the_prediction_of_the_models(
        chrome, served_app, models):
    from selenium.webdriver.common.by import By

    _, url, tmp_path = served_app
    log = tmp_path / "app.log"
    clip = tmp_path / "speech.wav"
    sf.write(clip, speech_like(6.5, 16000, seed=2), 16000)
    # What the page must show: the same models annotating the same bytes, in-process.
    expected = ClipAnnotator(served_config(models).load_models()).annotate_upload(
        clip.name, clip.read_bytes())
    summary = clip_summary(expected.rows)
    assert not summary["language"].empty and not summary["emotion"].empty

    chrome.get(url)
    wait_for(chrome, lambda d: (page := d.execute_script(READ_CLIP_TAB))
             and any(a.startswith(PROMPT) for a in page["alerts"]),
             PAGE_TIMEOUT_S, "the first run of the page to finish", log)
    upload = chrome.find_elements(By.CSS_SELECTOR,
                                  '[data-testid="stFileUploader"] input[type="file"]')
    assert len(upload) == 1, "expected one file control on the clip tab"
    upload[0].send_keys(str(clip))
    page = wait_for(chrome, shown_prediction, PREDICTION_TIMEOUT_S,
                    "the prediction for the uploaded clip to appear", log)

    assert page["alerts"] == [], page["alerts"]
    speech_s = float(expected.rows["speech_s"].sum())
    assert speech_s > 5.0  # the detector hears the voice
    assert (f"{clip.name} · {expected.duration_s:.1f} s, of which speech {speech_s:.1f} s"
            in page["headings"]), page
    assert [m["label"] for m in page["metrics"]] == ["Language", "Emotion"], page["metrics"]
    for shown, task in zip(page["metrics"], ("language", "emotion")):
        top = summary[task]
        assert shown["value"] == top.index[0]
        assert shown["delta"] == f"p = {top.iloc[0]:.2f}"
        captions = [part.strip() for part in shown["caption"].split("·")]
        assert captions == [f"{label} {p:.2f}" for label, p in top.items()]
