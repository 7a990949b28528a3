"""What the pages share: loading checkpoints once per process, decoding controls, limits, plain-text output.

Pages call the library (nlp.serve, nlp.checkpoint) and format what it returns; no tensor code lives here.
Importing this module does not import the library (nor torch, 1-2 s on a cold start): the functions that need
it import it when called, so the Chat page draws its box before torch has loaded.
"""

from __future__ import annotations

import html
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run webapp/app.py` puts webapp/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from nlp.checkpoint import Checkpoint
    from nlp.decoding import GenerationConfig


def checkpoints_dir() -> Path:
    """The shipped checkpoints, or $NLP_CHECKPOINTS (read on each call, so tests and hosts can point elsewhere)."""
    return Path(os.environ.get("NLP_CHECKPOINTS") or ROOT / "checkpoints")


TASKS = ("chat", "lm", "sentiment")
PAGE_TASKS = {"chat": "chat", "generate": "lm", "sentiment": "sentiment"}  # the pages that each serve one model


def served_tasks() -> tuple[str, ...]:
    """The models this server serves: all three, or those $NLP_MODELS names (comma-separated: chat, lm,
    sentiment), for hosts with little memory. Each model's page is shown only if its model is served, and
    only served models are loaded. An unknown name is an error that says which names there are."""
    named = os.environ.get("NLP_MODELS", "").strip()
    if not named:
        return TASKS
    tasks = [t.strip() for t in named.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"NLP_MODELS={named!r}: name some of {', '.join(TASKS)} (comma-separated), not "
                         f"{', '.join(unknown) or 'nothing'}")
    return tuple(t for t in TASKS if t in tasks)


# Set once this process has answered a chat message: `python -m webapp` loads the other models after it, so
# that the first visitor's first reply does not share the CPU with those loads
FIRST_REPLY = threading.Event()


# the commands that rebuild each shipped checkpoint (docs/training.md has the details)
RECIPES = {"lm": "python -m nlp train --config configs/lm.toml",
           "chat": "python -m nlp train --config configs/chat.toml\n"
                   "python -m nlp train --config configs/chat-whole.toml\n"
                   "python -m nlp train --config configs/chat-contrast.toml\n"
                   "python -m nlp train --config configs/chat-contrast-strong.toml\n"
                   "python -m nlp index --checkpoint checkpoints/chat\n"
                   "python -m nlp train-ranker --checkpoint checkpoints/chat",
           "sentiment": "python -m nlp train --config configs/sentiment.toml\n"
                        "python -m nlp train --config configs/sentiment-negation.toml"}

# Input limits, told to the user on the page and enforced (never cut silently)
MAX_MESSAGE_CHARS = 1_000
MAX_PROMPT_CHARS = 2_000
MAX_SENTENCE_CHARS = 5_000
MAX_UPLOAD_BYTES = 2_000_000
MAX_UPLOAD_ROWS = 5_000
MAX_SAMPLES = 5
MAX_CHAT_MESSAGES = 60    # kept per session (30 exchanges); older ones leave the page, so memory stays flat


@st.cache_resource(show_spinner="Loading the model ...")
def load_cached(path: str, task: str) -> Checkpoint:
    """One loaded model per checkpoint folder and process, shared by every session."""
    from nlp.serve import open_checkpoint

    return open_checkpoint(path, task)


class IndexLoader:
    """Loads a chat checkpoint's reply index in a thread of its own, so the chat answers (with the replies the
    model writes) while it loads; `status()` says which state it is in."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.index = None
        self.error = ""
        self.missing = False
        self.done = threading.Event()
        threading.Thread(target=self._load, name="load-reply-index", daemon=True).start()

    def _load(self) -> None:
        from nlp.errors import ReplyIndexError
        from nlp.retrieval import ReplyIndex, index_path

        try:
            path = index_path(self.checkpoint)
            if path.exists():
                self.index = ReplyIndex.load(path)
            else:
                self.missing = True
        except ReplyIndexError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - an unreadable index must not take the chat down with it
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.done.set()

    def status(self) -> str:
        """"ready", "loading", "missing" or "damaged"."""
        if not self.done.is_set():
            return "loading"
        return "ready" if self.index is not None else ("missing" if self.missing else "damaged")


@st.cache_resource(show_spinner=False)
def index_loader(checkpoint: str) -> IndexLoader:
    """One reply-index loader per chat checkpoint and process, shared by every session."""
    return IndexLoader(checkpoint)


def model_or_stop(task: str) -> Checkpoint:
    """The checkpoint for `task`, or a clear message with the rebuild command and an end to this page."""
    from nlp.checkpoint import CheckpointError

    try:
        return load_cached(str(checkpoints_dir() / task), task)
    except CheckpointError as e:
        st.error(f"The {task} model is not available: {e}")
        st.markdown("Rebuild it with:")
        st.code(RECIPES[task], language="bash")
        st.stop()


def plain(text: str) -> str:
    """HTML that shows `text` exactly as written, for st.markdown(..., unsafe_allow_html=True): one raw HTML
    block (a <div> on a single line, newlines as &#10; kept by white-space: pre-wrap), so Markdown never reads
    it and no link (not even a bare www.example.com), image, emoji code or formula is rendered; every character
    that HTML reads is escaped."""
    return ('<div style="white-space: pre-wrap">'
            + html.escape(text).replace("\r", "").replace("\n", "&#10;") + "</div>")


def show_plain(where, text: str) -> None:
    """`text` shown as written in `where` (st, a column, a placeholder from st.empty())."""
    where.markdown(plain(text), unsafe_allow_html=True)


def decoding_controls(key: str, ck: Checkpoint) -> tuple[GenerationConfig, int | None]:
    """Sidebar controls for decoding, starting from the checkpoint's default decoding (the CLI's and `eval`'s
    too); returns the config and the seed (None = random)."""
    from nlp.decoding import GenerationConfig, GenerationError
    from nlp.serve import default_decoding

    d = default_decoding(ck)
    sb = st.sidebar
    sb.subheader("Decoding")
    strategies = ["sample", "greedy", "beam"]
    strategy = sb.radio("Strategy", strategies, index=strategies.index(d.strategy), key=f"{key}-strategy",
                        horizontal=True,
                        help="sample: draw each token at random from the filtered distribution; greedy: always "
                             "the most likely token; beam: search several continuations and keep the best")
    candidates = 1
    if ck.task == "chat":
        candidates = sb.slider("Candidates (sample-and-rank)", 1, 32, d.num_candidates, key=f"{key}-candidates",
                               help="sample this many replies at once and show the one the model ranks best "
                                    "(1 = plain sampling); the list is under each reply")
    temperature = sb.slider("Temperature (lower = more predictable, higher = more surprising)", 0.0, 2.0,
                            d.temperature, 0.05, key=f"{key}-temperature", help="0 behaves like greedy decoding")
    top_k = sb.slider("Top-k (0 = off)", 0, 200, d.top_k, key=f"{key}-top-k",
                      help="sample only among the k most likely tokens")
    top_p = sb.slider("Top-p (nucleus)", 0.05, 1.0, d.top_p, 0.05, key=f"{key}-top-p",
                      help="sample among the most likely tokens that together reach this probability")
    min_p = sb.slider("Min-p (0 = off)", 0.0, 0.5, d.min_p, 0.01, key=f"{key}-min-p",
                      help="drop tokens less likely than this fraction of the most likely one")
    repetition = sb.slider("Repetition penalty (1 = off)", 1.0, 2.0, d.repetition_penalty, 0.05, key=f"{key}-rep",
                           help="divides the probability of tokens already in the text")
    no_repeat = sb.slider("No-repeat n-gram size (0 = off)", 0, 6, d.no_repeat_ngram_size, key=f"{key}-ngram",
                          help="never repeat a sequence of this many tokens")
    beams = sb.slider("Beams", 1, 8, d.num_beams, key=f"{key}-beams", help="for the beam strategy")
    max_new = sb.slider("Max new tokens", 1, 200, d.max_new_tokens, key=f"{key}-max")
    seed_text = sb.text_input("Seed (blank = random)", "", key=f"{key}-seed",
                              help="the same seed and settings give the same sampled text")
    seed = None
    if seed_text.strip():
        try:
            seed = int(seed_text.strip())
        except ValueError:
            sb.warning("The seed must be a whole number; using a random one.")
    try:
        cfg = GenerationConfig(strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                               repetition_penalty=repetition, no_repeat_ngram_size=no_repeat, num_beams=beams,
                               max_new_tokens=max_new, num_candidates=candidates)
    except GenerationError as e:
        sb.error(str(e))
        st.stop()
    return cfg, seed


SETTINGS = [("strategy", "strategy"), ("num_candidates", "candidates"), ("temperature", "temperature"),
            ("top_k", "top-k"), ("top_p", "top-p"), ("min_p", "min-p"), ("repetition_penalty", "repetition penalty"),
            ("no_repeat_ngram_size", "no-repeat n-gram"), ("num_beams", "beams"), ("max_new_tokens", "max new tokens")]
# each setting's control (its key after the page's prefix)
WIDGET_OF = {"strategy": "strategy", "candidates": "candidates", "temperature": "temperature", "top-k": "top-k",
             "top-p": "top-p", "min-p": "min-p", "repetition penalty": "rep", "no-repeat n-gram": "ngram",
             "beams": "beams", "max new tokens": "max"}


def non_default_settings(key: str, ck: Checkpoint, cfg: GenerationConfig) -> list[str]:
    """The decoding settings that differ from the checkpoint's defaults, as "temperature 2 (default 0.8)"."""
    from nlp.serve import default_decoding

    d = default_decoding(ck)
    out = []
    for field, label in SETTINGS:
        if field == "num_beams" and cfg.strategy != "beam":
            continue
        mine, theirs = getattr(cfg, field), getattr(d, field)
        if mine != theirs:
            out.append(f"{label} {mine:g} (default {theirs:g})" if isinstance(mine, (int, float))
                       else f"{label} {mine} (default {theirs})")
    return out


def settings_notice(key: str, ck: Checkpoint, cfg: GenerationConfig) -> None:
    """Above a page's input: the decoding settings that differ from the defaults, and a button that resets them."""
    changed = non_default_settings(key, ck, cfg)
    if changed:
        c1, c2 = st.columns([4, 1])
        c1.caption("Decoding differs from the defaults: " + ", ".join(changed))
        c2.button("Reset to defaults", key=f"{key}-reset", on_click=reset_decoding, args=(key, ck))


def reset_decoding(key: str, ck: Checkpoint) -> None:
    """Put every decoding control of a page back to the checkpoint's default (a button's callback, run before
    the page's next run draws the controls). Each control's value is set, not removed: a control whose value is
    removed from the session takes back the value the browser still shows."""
    from nlp.serve import default_decoding

    d = default_decoding(ck)
    for field, label in SETTINGS:
        st.session_state[f"{key}-{WIDGET_OF[label]}"] = getattr(d, field)
    st.session_state[f"{key}-seed"] = ""
