"""The app in a real browser: started with the Procfile's command, driven by Playwright in headless Chromium.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; .ci/run installs both. Screenshots
of each page go to test-output/screenshots/ (or --screenshots DIR). With --checkpoints DIR the app serves
that folder instead of tiny fixture models; the README's screenshots come from

    python -m pytest tests/test_browser.py --checkpoints checkpoints --screenshots docs/screenshots
"""

import contextlib
import os
import re
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


@contextlib.contextmanager
def serve(folder: Path, log: Path):
    """The app started exactly as a Procfile host would start it, serving the checkpoints in `folder`; yields
    (url, process)."""
    port = free_port()
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ")
    command = shlex.split(line[len("web: "):].replace("$PORT", str(port)))
    assert shutil.which(command[0]), command[0]
    env = {**os.environ, "NLP_CHECKPOINTS": str(folder), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail("the app did not start: " + log.read_text()[-2000:])
            yield url, proc
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def app(request, tmp_path_factory):
    """The app on tiny fixture checkpoints, or on --checkpoints."""
    if request.config.getoption("--checkpoints"):
        folder = (ROOT / request.config.getoption("--checkpoints")).resolve()
    else:
        folder = tmp_path_factory.mktemp("checkpoints")
        for task, path in request.getfixturevalue("trained").items():
            (folder / task).symlink_to(path)
    with serve(folder, tmp_path_factory.mktemp("log") / "streamlit.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def new_page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)
    return page


@pytest.fixture(scope="module")
def page(browser):
    page = new_page(browser)
    yield page
    page.close()


def settle(page):
    """Wait until the script run is over and every element has rendered (lazily loaded ones show a skeleton)."""
    page.wait_for_function("() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === "
                           "'notRunning' && !document.querySelector('[data-testid=stStatusWidget]') && "
                           "!document.querySelector('[data-testid=stSkeleton]')")


def test_chat_in_the_browser(app, page, shots, request):
    page.goto(app)
    if not request.config.getoption("--checkpoints"):  # the tiny fixture model: greedy, since a sample may be empty
        page.get_by_text("greedy", exact=True).click()
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill("Hi! Do you have any hobbies?")
    box.press("Enter")
    messages = page.get_by_test_id("stChatMessage")
    messages.nth(1).wait_for()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stChatMessage]').length >= 2 && "
                           "!document.querySelector('[data-testid=stStatusWidget]')")
    settle(page)  # the run is over: no element is being replaced while it is read
    reply = messages.nth(1).get_by_test_id("stMarkdownContainer").first.inner_text().strip()
    # the tiny fixture model's greedy reply can be only whitespace: then the page must say so
    assert reply or "empty reply" in messages.nth(1).inner_text(), "the reply is neither shown nor explained"
    assert messages.nth(0).inner_text().strip().endswith("Hi! Do you have any hobbies?")
    settle(page)
    page.screenshot(path=str(shots / "chat.png"), full_page=True)


LINKS = "see www.example.com and https://example.org/login?x=1 or [this](http://evil.example)"


def test_links_in_chat_and_generated_text_are_shown_as_text(app, page):
    """What a user or a model writes is plain text: no live link, not even a bare www.example.com."""
    page.goto(app)
    send(page, LINKS)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stChatMessage]').length >= 2")
    settle(page)
    first = page.get_by_test_id("stChatMessage").first
    assert first.inner_text().strip().endswith(LINKS)
    assert first.locator("a").count() == 0
    page.goto(app + "/generate")
    page.get_by_label(re.compile("^Prompt")).fill(LINKS)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("tokens/s").wait_for()
    settle(page)
    assert LINKS in page.get_by_test_id("stMain").inner_text()
    assert page.get_by_test_id("stMain").locator("a[href*='example']").count() == 0  # (headings have anchors)


def test_generate_in_the_browser(app, page, shots):
    page.goto(app + "/generate")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("tokens/s").wait_for()
    settle(page)
    page.screenshot(path=str(shots / "generate.png"), full_page=True)


def test_reset_to_defaults_puts_the_controls_back_in_the_browser(app, page):
    """The browser sends a control's shown value back on the next run: Reset must set the values, not forget them
    (it once left the slider at 2.00 and the next text used it)."""
    page.goto(app + "/generate")
    settle(page)
    shown = page.get_by_test_id("stSlider").filter(has_text="Temperature").get_by_test_id("stSliderThumbValue")
    default = shown.inner_text()
    for _ in range(2):
        page.get_by_role("slider", name=re.compile("^Temperature")).press("End")
        page.get_by_text("Decoding differs from the defaults").wait_for()
        settle(page)
        assert shown.inner_text() == "2.00" != default
        page.get_by_role("button", name="Reset to defaults").click()
        page.get_by_text("Decoding differs from the defaults").wait_for(state="detached")
        settle(page)
        assert shown.inner_text() == default
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("tokens/s").wait_for()
        settle(page)
        assert not page.get_by_text("Decoding differs from the defaults").count()
        assert shown.inner_text() == default


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


SESSIONS = 8
TOPICS = ["the weather", "your favourite film", "cooking dinner", "football", "learning french", "your dog",
          "a trip to the sea", "the new job"]


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory in MB (VmHWM in /proc/PID/status: Linux only)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("no /proc/PID/status to read the server's memory from")
    return next(int(line.split()[1]) / 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM:"))


def open_chat(page, url: str, seed: int) -> None:
    page.goto(url)
    box = page.get_by_label("Seed (blank = random)", exact=True)
    box.fill(str(seed))
    box.press("Enter")
    settle(page)


def send(page, text: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


def chat_shown(page) -> list[str]:
    """The chat's messages as the page shows them (each message's own text), once its run is over."""
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stChatMessage]').length >= 2")
    settle(page)
    messages = page.get_by_test_id("stChatMessage")
    return [messages.nth(i).get_by_test_id("stMarkdownContainer").first.inner_text().strip()
            for i in range(messages.count())]


def go(page, name: str) -> None:
    page.get_by_test_id("stSidebarNavLink").filter(has_text=name).click()
    settle(page)


def test_eight_sessions_at_once_get_their_own_replies_in_bounded_memory(browser, tmp_path):
    """The shipped models, 8 sessions chatting at once with a seed each: every session shows its own message and
    the reply the same seed gives when the sessions come one at a time; then every session uses every page,
    and the server's peak memory stays within 550 MB (495 MB measured on a 2-core AVX512-BF16 EPYC)."""
    with serve(ROOT / "checkpoints", tmp_path / "streamlit.log") as (url, proc):
        messages = [f"Hi! What do you think about {topic}?" for topic in TOPICS]
        serial = []
        for seed, text in enumerate(messages):
            page = new_page(browser)
            open_chat(page, url, seed)
            send(page, text)
            serial.append(chat_shown(page))
            page.close()
        assert all(shown[0] == text and len(shown) == 2 for shown, text in zip(serial, messages)), serial
        assert len({shown[1] for shown in serial}) > 1  # the seeds and messages give different replies

        pages = [new_page(browser) for _ in range(SESSIONS)]
        for seed, page in enumerate(pages):
            open_chat(page, url, seed)
        for page, text in zip(pages, messages):  # all sent before any reply is read
            send(page, text)
        assert [chat_shown(page) for page in pages] == serial

        for page in pages:
            go(page, "Generate")
            page.get_by_role("button", name="Generate").click()
        for page in pages:
            page.get_by_text("tokens/s").wait_for()
            go(page, "Sentiment")
            page.get_by_label("Text (up to 5,000 characters)").fill("Not bad at all, I quite liked it.")
            page.get_by_role("button", name="Analyse").click()
        for page in pages:
            page.get_by_text("Where the classifier looked").wait_for()
            go(page, "Models")
            page.get_by_text("Sentiment classifier").wait_for()
            go(page, "Chat")  # the session kept its conversation
        assert [chat_shown(page) for page in pages] == serial
        peak = peak_rss_mb(proc.pid)
        for page in pages:
            page.close()
    print(f"server peak memory, {SESSIONS} sessions on every page: {peak:.0f} MB")
    assert peak <= 550, f"the server's peak memory was {peak:.0f} MB"
