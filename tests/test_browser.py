"""The app in a real browser: started with the Procfile's command, driven by Playwright in headless Chromium.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; .ci/run installs both. Screenshots
of each page go to test-output/screenshots/ (or --screenshots DIR). With --checkpoints DIR the app serves
that folder instead of tiny fixture models; the README's screenshots come from

    python -m pytest tests/test_browser.py --checkpoints checkpoints --screenshots docs/screenshots
"""

import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser

playwright = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(request) -> Path:
    folder = ROOT / request.config.getoption("--screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def app(request, tmp_path_factory):
    """The app started exactly as a Procfile host would start it, on tiny fixture checkpoints or --checkpoints."""
    if request.config.getoption("--checkpoints"):
        folder = (ROOT / request.config.getoption("--checkpoints")).resolve()
    else:
        folder = tmp_path_factory.mktemp("checkpoints")
        for task, path in request.getfixturevalue("trained").items():
            (folder / task).symlink_to(path)
    port = free_port()
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ")
    command = shlex.split(line[len("web: "):].replace("$PORT", str(port)))
    assert shutil.which(command[0]), command[0]
    env = {**os.environ, "NLP_CHECKPOINTS": str(folder), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start: " + Path(log.name).read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def page(app):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def settle(page):
    """Wait until the script run is over and every element has rendered (lazily loaded ones show a skeleton)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]') && "
                           "!document.querySelector('[data-testid=stSkeleton]')")


def test_chat_in_the_browser(app, page, shots):
    page.goto(app)
    page.get_by_text("greedy", exact=True).click()  # deterministic reply (a sampled one may be empty)
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill("hi, how are you?")
    box.press("Enter")
    messages = page.get_by_test_id("stChatMessage")
    messages.nth(1).wait_for()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stChatMessage]').length >= 2 && "
                           "!document.querySelector('[data-testid=stStatusWidget]')")
    reply = messages.nth(1).get_by_test_id("stMarkdownContainer").first.inner_text().strip()
    # the tiny fixture model's greedy reply can be only whitespace: then the page must say so
    assert reply or "empty reply" in messages.nth(1).inner_text(), "the reply is neither shown nor explained"
    assert messages.nth(0).inner_text().strip().endswith("hi, how are you?")
    settle(page)
    page.screenshot(path=str(shots / "chat.png"), full_page=True)


def test_generate_in_the_browser(app, page, shots):
    page.goto(app + "/generate")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("tokens/s").wait_for()
    settle(page)
    page.screenshot(path=str(shots / "generate.png"), full_page=True)


def test_sentiment_in_the_browser(app, page, shots):
    page.goto(app + "/sentiment")
    page.get_by_label("Text (up to 5,000 characters)").fill("Excellent product, works great, I love it.")
    page.get_by_role("button", name="Analyse").click()
    page.get_by_text("Where the classifier looked").wait_for()
    label = page.get_by_test_id("stMetricValue").first.inner_text()
    assert label in ("positive", "negative", "neutral / mixed")
    settle(page)
    page.screenshot(path=str(shots / "sentiment.png"), full_page=True)


def test_models_page_in_the_browser(app, page, shots):
    page.goto(app + "/model_cards")
    page.get_by_text("Sentiment classifier").wait_for()
    settle(page)
    page.screenshot(path=str(shots / "models.png"), full_page=True)
