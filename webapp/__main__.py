"""Serve the app as `streamlit run webapp/app.py` does, loading the models while the server starts.

    python -m webapp [streamlit options, e.g. --server.port=8501]      (the Procfile's and the Dockerfile's command)

Streamlit runs a page's script only when a browser connects, so the first visitor would wait for torch's
import and the chat model's load after the server is up. Here a thread does that work as soon as the server
is up, while the browser loads the page, and fills the same `st.cache_resource` cache the pages read (its
per-key lock makes a page that asks early wait for the load instead of loading twice); the other models follow
after the first reply. A model that cannot be loaded is left to its page, which says why.
`streamlit run webapp/app.py` still works, without the head start.
"""

import ctypes
import logging
import os
import sys
import threading
import time
from pathlib import Path

WEBAPP = Path(__file__).resolve().parent


def preload(others_after: float = 30.0) -> None:
    """The served models (ui.served_tasks): the chat model first (Chat is the page a visitor sees first), then
    its reply index in a thread of its own. The other two wait for the first chat reply or `others_after`
    seconds, whichever comes first: loaded at once they held the GIL while the first visitor's page and reply
    ran."""
    sys.path[:0] = [str(WEBAPP), str(WEBAPP.parent)]  # as app.py arranges for its pages
    import ui

    def load(task: str) -> None:
        try:
            ui.load_cached(str(ui.checkpoints_dir() / task), task)
        except Exception:  # noqa: BLE001 - the page shows the error (CheckpointError or a bug) to its visitor
            pass

    # While torch imports and the chat model loads, the server's thread serves the page to the first visitor:
    # each time it comes back from a socket it waits for the GIL, up to the switch interval (5 ms) of a thread
    # that holds it; 0.5 ms meanwhile
    try:
        served = ui.served_tasks()
    except ValueError:
        return  # the page says what is wrong with the setting
    if "chat" in served:
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.0005))
        try:
            load("chat")
            ui.index_loader(str(ui.checkpoints_dir() / "chat"))  # its own thread: the chat answers meanwhile
        finally:
            sys.setswitchinterval(interval)
        ui.FIRST_REPLY.wait(others_after)
    for task in ("lm", "sentiment"):  # a page opened before then loads its model itself, once
        if task in served:
            load(task)


def preload_once_serving(limit: float = 10.0) -> None:
    """`preload` as soon as Streamlit's server is up (or after `limit` seconds). Started at once, torch's
    import shared the GIL with the server's start: the health check answered 0.6 s later (bench/cold_start.py),
    and the browser could fetch the page only then."""
    from streamlit.runtime import Runtime
    from streamlit.runtime.runtime import RuntimeState

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not (Runtime.exists() and Runtime.instance().state != RuntimeState.INITIAL):
        time.sleep(0.01)
    preload()


def not_from_preload(record: logging.LogRecord) -> bool:
    """Outside a page's run Streamlit warns that there is no script context: for the preload that is expected."""
    return record.threadName != "preload-models"


def lean_memory(arenas: int = 2, mmap_threshold: int = 16 << 20, trim_threshold: int = 16 << 20) -> None:
    """Memory settings for a server whose sessions each run tensor work in a thread of their own; call it before
    torch is imported (MKL reads its setting when torch loads). Elsewhere than glibc and MKL builds the parts
    that do not apply do nothing.

    - MKL (torch's BLAS on x86) keeps each thread's matrix-multiply buffers until that thread exits: a
      sample-and-rank reply (16 rows a step) left about 22 MB with its session's script thread, and 8 sessions
      waiting their turn held 8 such caches (bench/serve_memory.py measures it). MKL_DISABLE_FAST_MM frees them
      after each call instead; the malloc threshold below keeps that cheap.
    - glibc gives each thread that allocates its own arena (up to 8 per core) and keeps what each one freed: two
      arenas (as MALLOC_ARENA_MAX=2) keep the server's memory flat as sessions come."""
    os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        # M_MMAP_THRESHOLD fixed at 16 MB: tensors above it are mapped and unmapped, never kept in an arena (glibc
        # otherwise raises the threshold after the first large free, and freed tensors stay resident). Lower, the
        # blocks of 2-16 MB that a reply allocates and frees at once (the fused LSTM's copies of a layer's 4 MB
        # weights, MKL's buffers, which it frees after each call) were mapped afresh each time, and their page
        # faults made a 16-candidate chat reply 1.2-1.4x slower at 2 MB, 1.3x more at 1 MB
        # (bench/serve_memory.py); the 8-session peak is 15 MB higher than at 2 MB (tests/test_browser.py).
        # M_TRIM_THRESHOLD 16 MB: an arena keeps that much free at its top instead of returning it after each
        # product (the default once the threshold is fixed: 128 KB)
        libc.mallopt(-3, mmap_threshold)
        libc.mallopt(-1, trim_threshold)
    except (AttributeError, OSError):
        pass


def skip_component_scan() -> None:
    """Streamlit's Runtime, as it starts, reads the metadata of every installed distribution to find custom
    components (Streamlit's "v2" components, declared in a package's pyproject): 0.14 s here (147
    distributions), before the server answers. This app ships none and uses none, so `python -m webapp` skips
    the scan; `streamlit run webapp/app.py` still does it."""
    try:
        from streamlit.components.v2.component_manager import BidiComponentManager
    except ImportError:  # a Streamlit without v2 components scans nothing
        return
    if hasattr(BidiComponentManager, "discover_and_register_components"):
        BidiComponentManager.discover_and_register_components = lambda self, **kwargs: None


def main() -> None:
    lean_memory()
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(not_from_preload)
    from streamlit.web import cli  # first, in this thread: Streamlit's import is not safe from two threads

    skip_component_scan()

    threading.Thread(target=preload_once_serving, name="preload-models", daemon=True).start()
    cli.main(["run", str(WEBAPP / "app.py"), *sys.argv[1:]], prog_name="streamlit")


if __name__ == "__main__":
    main()
