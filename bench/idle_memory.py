"""The app server's resident memory once a visitor has used every page, all models served or only some.

    python bench/idle_memory.py          # writes bench/results/idle_memory.json

For each setting of NLP_MODELS ("" = all three models, the baseline; "chat"; "chat,sentiment"): the server is
started with the Procfile's command on the shipped checkpoints; one Chromium session sends a chat message,
generates a text, analyses a sentence and opens the Models page (each page that is served); then, 5 s after
the last page settled, the server's resident memory (VmRSS) and its peak (VmHWM) are read from /proc. Hosts'
small tiers allow 512 MB. Linux only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from cold_start import free_port, procfile_command, wait_healthy  # noqa: E402
from common import machine, save  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SETTINGS = ["", "chat", "chat,sentiment"]


def memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: next(int(line.split()[1]) / 1024 for line in status if line.startswith(key + ":"))
            for key in ("VmRSS", "VmHWM")}


def settle(page) -> None:
    page.wait_for_function("() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === "
                           "'notRunning' && !document.querySelector('[data-testid=stStatusWidget]')")


def use_every_page(page, url: str, served: str) -> None:
    tasks = served.split(",") if served else ["chat", "lm", "sentiment"]
    if "chat" in tasks:
        page.goto(url)
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill("Hi! What do you do for fun?")
        box.press("Enter")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=stChatMessage]').length >= 2")
        settle(page)
    if "lm" in tasks:
        page.goto(url + "/generate")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("tokens/s").wait_for()
    if "sentiment" in tasks:
        page.goto(url + "/sentiment")
        page.get_by_role("button", name="Analyse").click()
        page.get_by_text("Where the classifier looked").wait_for()
    page.goto(url + "/model_cards")
    page.get_by_text("Chat (encoder-decoder").wait_for()
    settle(page)


def measure(browser, served: str) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "NLP_MODELS": served, "NLP_CHECKPOINTS": str(ROOT / "checkpoints")}
    proc = subprocess.Popen(procfile_command(ROOT, port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, time.perf_counter())
        page = browser.new_page()
        page.set_default_timeout(120_000)
        use_every_page(page, url, served)
        time.sleep(5)
        out = memory_mb(proc.pid)
        page.close()
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        for served in SETTINGS:
            results[served or "all"] = {k: round(v) for k, v in measure(browser, served).items()}
            print(served or "all", results[served or "all"], flush=True)
        browser.close()
    save("idle_memory", {"machine": machine(), "unit": "MB", "after_every_served_page": results})


if __name__ == "__main__":
    main()
