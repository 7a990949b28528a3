"""Cold start of the hosted demo: Procfile start -> first chat reply in Chromium, and `python -m nlp --help`.

    python bench/cold_start.py [--baseline REV] [--repeats 3]     # writes bench/results/cold_start.json
                                                                  # (cold_start_vs_REV.json for another REV)

Issue 13 asks for at most 3.5 s from process start to the first reply text, and at most 1 s for `--help`, on
the development CPU. Both are measured for this tree and, as the baseline in the same run, for REV (default:
main before issue 13's work) checked out in a temporary git worktree; each tree serves its own committed
checkpoints (older code cannot read every newer checkpoint file), or both serve --checkpoints when given.
Chromium is started first (a visitor's browser is already open); the clock starts when the Procfile command is
spawned and stops when the reply's first text is on the page ("reply shown") and when the page's run is over
("page idle"). Then, once the server is idle, a second tab times page opened -> reply shown: the part of a
cold start that the browser and the page's run take whatever the server does. The same marks for
bench/bare_chat.py (a chat page that echoes, no torch, no model) give the floor: what Streamlit and the browser
alone take on the machine. Median of --repeats; the file
cache is warm after the first run, so this is a cold process, not a cold disk. Needs Debian's chromium and the
playwright package (see tests/test_browser.py).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import machine, save  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BASELINE = "38e160f"  # main before issue 13's work (lazy imports, serving without datasets)
FLOOR = "floor: bench/bare_chat.py (Streamlit, no model)"
MESSAGE = "Hi! What did you do this weekend?"
REPLY_SHOWN = ("() => { const m = document.querySelectorAll('[data-testid=stChatMessage]');"
               " return m.length >= 2 && m[1].querySelector('[data-testid=stMarkdownContainer]') !== null"
               " && m[1].querySelector('[data-testid=stMarkdownContainer]').innerText.trim().length > 0; }")
IDLE = "() => !document.querySelector('[data-testid=stStatusWidget]')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_command(root: Path, port: int) -> list[str]:
    line = (root / "Procfile").read_text().strip()
    return shlex.split(line.removeprefix("web: ").replace("$PORT", str(port)))


def bare_command(port: int) -> list[str]:
    """The Procfile's server options on bench/bare_chat.py: Streamlit and the browser with no model at all."""
    options = [o for o in procfile_command(ROOT, port) if o.startswith("--")]
    return [sys.executable, "-m", "streamlit", "run", str(ROOT / "bench" / "bare_chat.py"), *options]


def help_seconds(root: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nlp", "--help"], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - start


def new_page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)
    return page


def send_first_message(page, url: str) -> float:
    """Open the app, wait for the chat box, send MESSAGE, wait for the reply's text; when the box showed."""
    page.goto(url)
    box = page.get_by_test_id("stChatInputTextArea")
    box.wait_for()
    shown = time.perf_counter()
    box.fill(MESSAGE)
    box.press("Enter")
    page.wait_for_function(REPLY_SHOWN, polling=20)
    return shown


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until_idle(pid: int, quiet: float = 0.05, every: float = 0.5, limit: float = 60.0) -> None:
    """Until the process uses under `quiet` CPU seconds in `every` seconds (Linux /proc; else a fixed wait)."""
    deadline = time.perf_counter() + limit
    try:
        used = cpu_seconds(pid)
        while time.perf_counter() < deadline:
            time.sleep(every)
            now = cpu_seconds(pid)
            if now - used < quiet:
                return
            used = now
    except OSError:
        time.sleep(10)


def wait_healthy(proc: subprocess.Popen, url: str, start: float, limit: float = 120.0) -> None:
    """Poll the server's health check every 20 ms until it answers "ok"; an error if the process ends or
    `limit` seconds pass since `start` (a perf_counter time)."""
    while True:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            time.sleep(0.02)
        if proc.poll() is not None or time.perf_counter() - start > limit:
            raise RuntimeError(f"the app at {url} did not start")


def first_reply(root: Path, checkpoints: Path, browser, bare: bool = False) -> dict[str, float]:
    """Seconds from spawning the Procfile command (`bare`: bench/bare_chat.py's) to: health check ok, chat box
    shown, reply shown, page idle."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    page = new_page(browser)
    env = {**os.environ, "NLP_CHECKPOINTS": str(checkpoints)}
    marks = {}
    start = time.perf_counter()
    command = bare_command(port) if bare else procfile_command(root, port)
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, url, start)
        marks["server healthy"] = time.perf_counter() - start
        marks["chat box shown"] = send_first_message(page, url) - start
        marks["reply shown"] = time.perf_counter() - start
        page.wait_for_function(IDLE, polling=20)
        marks["page idle"] = time.perf_counter() - start
        page.close()
        # the same in a second tab, the server now warm and idle (its loads after the first reply done): what
        # the browser and one page run take on their own
        wait_until_idle(proc.pid)
        page = new_page(browser)
        opened = time.perf_counter()
        send_first_message(page, url)
        marks["warm server: page opened -> reply shown"] = time.perf_counter() - opened
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=30)
    return marks


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=BASELINE, help="git revision to compare with (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoints", help="one checkpoints folder for both trees (default: each tree's own)")
    a = p.parse_args()
    given = Path(a.checkpoints).resolve() if a.checkpoints else None
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), a.baseline], cwd=ROOT, check=True)
        try:
            trees = {"this tree": ROOT, f"baseline {a.baseline}": base}
            helps = {name: [] for name in trees}
            replies = {name: [] for name in [*trees, FLOOR]}
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run"])
                for _ in range(a.repeats):  # alternate, so that drift in the machine's load hits both alike
                    for name, root in trees.items():
                        helps[name].append(help_seconds(root))
                        replies[name].append(first_reply(root, given or root / "checkpoints", browser))
                    replies[FLOOR].append(first_reply(ROOT, ROOT / "checkpoints", browser, bare=True))
                browser.close()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    save("cold_start" if a.baseline == BASELINE else f"cold_start_vs_{a.baseline}", {
        "machine": machine(), "checkpoints": str(given) if given else "each tree's own", "repeats": a.repeats,
        "message": MESSAGE,
        "what": "seconds from spawning the Procfile command (browser already open) to each mark, median",
        "procfile_start_to_first_reply_s": {name: medians(runs) for name, runs in replies.items()},
        "nlp_help_s": {name: round(statistics.median(v), 3) for name, v in helps.items()},
        "bars": {"reply shown": 3.5, "nlp --help": 1.0}})


if __name__ == "__main__":
    main()
