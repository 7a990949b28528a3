"""The app server's memory: what the Generate page's detokenizer import adds, and the peak of 8 generations at once.

    python bench/serve_memory.py [--repeats 3]       # writes bench/results/serve_memory.json

Each figure is measured in a fresh process set up as the server is (its malloc settings; torch, streamlit,
pandas and altair imported; the shipped LM loaded), with its baseline in the same run:
- detokenizer: resident memory (VmRSS) and seconds added by importing the WikiText detokenizer, sacremoses
  (now) against nltk's Treebank detokenizer (before; `import nltk` also loads scipy and scikit-learn);
- 8 at once: the rise of peak resident memory (VmHWM, reset first) while 8 threads, as 8 sessions do, each
  sample 60 tokens of the LM's default decoding from the same prompt; now, the fused LSTM's inference calls take
  turns (nlp.cpu_serving.fused_turn), against the baseline where they all run at once (oneDNN copies each layer's
  weights on every call);
- 8 chat replies: the same rise while 8 threads each reply to their own message with sample-and-rank over 16
  candidates (the shipped chat model), and the median seconds of one reply with the server to itself. Now (the
  server's settings, webapp.__main__.lean_memory) against three baselines, each undoing one choice: MKL keeping
  each thread's matrix-multiply buffers until it exits (its default; MKL_DISABLE_FAST_MM frees them after each
  call: a session's thread waiting for its turn held them); every block over 2 MB mapped afresh (lean_memory's
  malloc threshold before: with MKL's buffers freed after each call, and the fused LSTM copying a layer's 4 MB
  weights on each call, a reply page-faulted those blocks in again and again).
Median of --repeats. Linux only (/proc/self/status).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import machine, save  # noqa: E402

SESSIONS = 8
PROMPT = "The history of the city"
CANDIDATES = 16
TOPICS = ["music", "cooking", "the weather", "football", "your job", "travelling", "movies", "your family"]


def status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def worker(kind: str) -> dict:
    import threading

    sys.path.insert(0, str(ROOT))
    from webapp.__main__ import lean_memory

    if kind == "chat-mmap-2mb":  # lean_memory's malloc settings before: every block over 2 MB mapped afresh
        lean_memory(mmap_threshold=2 << 20, trim_threshold=8 << 20)
    else:
        lean_memory()  # as `python -m webapp` does first, before torch loads (MKL reads its settings then)
    if kind == "chat-mkl-buffers-kept":
        os.environ.pop("MKL_DISABLE_FAST_MM")  # before torch loads, so MKL keeps its default
    import altair  # noqa: F401 - what the server holds anyway
    import pandas  # noqa: F401
    import streamlit  # noqa: F401

    from nlp import models
    from nlp.decoding import make_generator
    from nlp.serve import chat_reply, continue_text, default_decoding, open_checkpoint

    ck = open_checkpoint(ROOT / "checkpoints" / "lm", "lm")
    if kind.startswith("detokenizer"):
        before, start = status_mb("VmRSS"), time.perf_counter()
        if kind == "detokenizer-nltk":
            from nltk.tokenize.treebank import TreebankWordDetokenizer  # noqa: F401
        else:
            from sacremoses import MosesDetokenizer  # noqa: F401
        return {"mb": status_mb("VmRSS") - before, "seconds": time.perf_counter() - start}

    if kind == "at-once-no-turns":
        import contextlib

        models._FUSED_CPU_INFERENCE = contextlib.nullcontext()
    if kind.startswith("chat"):
        chat = open_checkpoint(ROOT / "checkpoints" / "chat", "chat")
        ranked = dataclasses.replace(default_decoding(chat), num_candidates=CANDIDATES)

        def session(seed: int) -> None:  # a reply, then (as the app) its attention map, which waits its turn
            "".join(chat_reply(chat, [f"Hi! What do you think about {TOPICS[seed]}?"], ranked,
                               make_generator(seed)).stream)
    else:
        cfg = default_decoding(ck)
        cfg.max_new_tokens, cfg.min_new_tokens = 60, 60

        def session(seed: int) -> None:
            gen = continue_text(ck, PROMPT, cfg, make_generator(seed))
            for _ in gen.stream:
                pass
    seconds = []
    for seed in range(SESSIONS):  # first-call allocations (each prompt's shapes) are not what this measures
        start = time.perf_counter()
        session(seed)
        seconds.append(time.perf_counter() - start)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = status_mb("VmHWM")
    threads = [threading.Thread(target=session, args=(seed,)) for seed in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"mb": status_mb("VmHWM") - before, "seconds_one_at_a_time": statistics.median(seconds[1:])}


def measure(kind: str, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--worker", kind], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    save("serve_memory", {
        "machine": machine(),
        "repeats": args.repeats,
        "detokenizer_import": {"sacremoses": measure("detokenizer-sacremoses", args.repeats),
                               "nltk_treebank (baseline)": measure("detokenizer-nltk", args.repeats)},
        f"{SESSIONS}_generations_at_once_peak_rise_mb": {
            "fused calls take turns": measure("at-once-turns", args.repeats)["mb"],
            "all at once (baseline)": measure("at-once-no-turns", args.repeats)["mb"]},
        f"{SESSIONS}_chat_replies_{CANDIDATES}_candidates": {
            "what": "mb: rise of peak memory with 8 replies at once; seconds_one_at_a_time: median reply alone",
            "now": measure("chat-now", args.repeats),
            "MKL buffers kept per thread (baseline)": measure("chat-mkl-buffers-kept", args.repeats),
            "blocks over 2 MB mapped afresh (baseline)": measure("chat-mmap-2mb", args.repeats)},
    })


if __name__ == "__main__":
    main()
