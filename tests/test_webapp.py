"""Every page through streamlit.testing.v1.AppTest, on tiny checkpoints trained from the fixtures."""

import hashlib
import html
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

WEBAPP = Path(__file__).resolve().parent.parent / "webapp"
sys.path[:0] = [str(WEBAPP), str(WEBAPP.parent)]  # what app.py arranges when streamlit runs it

HOSTILE = ["<script>alert(1)</script>", "![x](http://127.0.0.1:9/pixel.png)", "a\x00b\x1b[31mred\x07",
           "x" * 100_000, "   ", ":red[colour] $x^2$ **bold**"]
HOSTILE_IDS = ["script", "markdown-image", "control-chars", "100k-chars", "blank", "streamlit-markup"]


@pytest.fixture
def checkpoints(trained, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for task, path in trained.items():
        (folder / task).symlink_to(path)
    monkeypatch.setenv("NLP_CHECKPOINTS", str(folder))
    return folder


def page(name: str) -> AppTest:
    return AppTest.from_file(str(WEBAPP / name), default_timeout=120)


class TableReader(HTMLParser):
    """The rows of the HTML tables a page drew (webapp/charts.py), as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables(at: AppTest) -> list[list[dict[str, str]]]:
    """Each HTML table on the page as rows {column: text}."""
    out = []
    for m in at.markdown:
        if m.value.startswith("<table>"):
            reader = TableReader()
            reader.feed(m.value)
            head, *rows = reader.rows
            out.append([dict(zip(head, row)) for row in rows])
    return out


def say(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def last_reply(at: AppTest) -> str:
    return at.session_state.chat[-1]["content"]


def test_chat_keeps_its_history_over_several_turns(checkpoints):
    at = page("chat.py").run()
    assert not at.exception
    for n, text in enumerate(["hello there!", "how was your day?", "what are you doing tonight?"], 1):
        say(at, text)
        assert len(at.session_state.chat) == 2 * n
        assert len(at.chat_message) == 2 * n
    assert [m["role"] for m in at.session_state.chat] == ["user", "assistant"] * 3
    assert at.session_state.chat[0]["content"] == "hello there!"
    # four turns were sent the third time: the page says the oldest did not fit the model's 3-turn context
    assert any("older" in note for note in at.session_state.chat[-1]["notes"])
    at.sidebar.button[0].click().run()  # New chat
    assert at.session_state.chat == []


def test_python_m_webapp_loads_the_chat_model_first_and_the_others_after_the_first_reply(checkpoints, monkeypatch):
    """The head start of `python -m webapp`: the chat model at once; the LM and the classifier only once the
    chat page has answered (they held the CPU while the first visitor's page and reply ran)."""
    import threading
    import time

    import ui
    from webapp.__main__ import preload

    loaded, real = [], ui.load_cached

    def load_cached(path, task):
        if threading.current_thread() is worker:
            loaded.append(task)
        return real(path, task)
    monkeypatch.setattr(sys, "path", list(sys.path))  # preload puts webapp/ first, as app.py does
    monkeypatch.setattr(ui, "FIRST_REPLY", threading.Event())
    monkeypatch.setattr(ui, "load_cached", load_cached)
    worker = threading.Thread(target=preload, daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while not loaded and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.join(1.0)
    assert loaded == ["chat"] and worker.is_alive()  # the others wait for a reply
    say(page("chat.py").run(), "hello there!")           # the chat page's first reply
    worker.join(20)  # (well before preload's 30 s fallback)
    assert loaded == ["chat", "lm", "sentiment"]


def test_python_m_webapp_skips_streamlits_scan_for_custom_components(monkeypatch):
    """Streamlit's Runtime scans every installed distribution for custom components as it starts (0.14 s
    before the server answers); the app uses none, so its launcher turns the scan off."""
    from streamlit.components.v2 import component_manager, manifest_scanner

    from webapp.__main__ import skip_component_scan

    manager = component_manager.BidiComponentManager
    monkeypatch.setattr(manager, "discover_and_register_components", manager.discover_and_register_components)
    scans = []
    monkeypatch.setattr(manifest_scanner, "scan_component_manifests", lambda *a, **k: scans.append(1) or [])
    manager().discover_and_register_components(start_file_watching=False)
    assert scans == [1]  # Streamlit's own behaviour, which the skip relies on knowing
    skip_component_scan()
    manager().discover_and_register_components(start_file_watching=False)
    assert scans == [1]


def test_a_long_chat_keeps_only_its_last_messages_and_says_so(checkpoints, monkeypatch):
    import ui

    monkeypatch.setattr(ui, "MAX_CHAT_MESSAGES", 4)
    at = page("chat.py").run()
    for text in ["one", "two", "three", "four"]:
        say(at, text)
    chat = at.session_state.chat
    assert len(chat) == 4 and [m["role"] for m in chat] == ["user", "assistant"] * 2
    assert [m["content"] for m in chat if m["role"] == "user"] == ["three", "four"]
    assert any("4 oldest messages were removed" in c.value for c in at.caption)


def test_greedy_gives_the_same_reply_twice(checkpoints):
    at = page("chat.py").run()
    at.radio(key="chat-strategy").set_value("greedy").run()
    first = last_reply(say(at, "do you like movies?"))
    at.sidebar.button[0].click().run()
    assert last_reply(say(at, "do you like movies?")) == first


def test_a_seed_reproduces_a_sampled_reply(checkpoints):
    at = page("chat.py").run()
    at.slider(key="chat-temperature").set_value(1.2).run()
    at.text_input(key="chat-seed").set_value("11").run()
    first = last_reply(say(at, "tell me about your weekend"))
    at.sidebar.button[0].click().run()
    assert last_reply(say(at, "tell me about your weekend")) == first


def test_chat_reply_has_an_attention_map(checkpoints):
    at = page("chat.py").run()
    at.radio(key="chat-strategy").set_value("greedy").run()  # deterministic: a sampled reply may be empty
    say(at, "hi, how are you?")
    reply = at.session_state.chat[-1]
    assert reply["attention"] and len(reply["attention"]) == len(reply["reply_tokens"])
    assert any(e.label == "Attention map" for e in at.expander)


def test_sample_and_rank_lists_the_candidates_under_the_reply(checkpoints):
    at = page("chat.py").run()
    at.slider(key="chat-candidates").set_value(6).run()
    at.text_input(key="chat-seed").set_value("3").run()
    say(at, "what do you do for fun?")
    reply = at.session_state.chat[-1]
    assert reply["content"] == reply["candidates"][0]["text"] and 1 <= len(reply["candidates"]) <= 6
    scores = [c["score"] for c in reply["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert any(e.label.startswith("Candidates") for e in at.expander)
    assert len(reply["attention"]) == len(reply["reply_tokens"])


def with_chat_decoding(checkpoints: Path, tmp_path: Path, monkeypatch, decoding: dict) -> None:
    """Serve a copy of the chat checkpoint whose config.json names `decoding` (what `tune-chat --write` stores)."""
    from nlp.checkpoint import update_config

    own = tmp_path / "own"
    shutil.copytree(checkpoints / "chat", own / "chat")
    update_config(own / "chat", decoding=decoding)
    for task in ("lm", "sentiment"):
        (own / task).symlink_to(checkpoints / task)
    monkeypatch.setenv("NLP_CHECKPOINTS", str(own))


def test_the_candidates_table_shows_the_overlap_the_ranking_weighs(checkpoints, tmp_path, monkeypatch):
    with_chat_decoding(checkpoints, tmp_path, monkeypatch,
                       {"num_candidates": 6, "ranking": {"likelihood": 1.0, "overlap": 5.0}})
    at = page("chat.py").run()
    at.text_input(key="chat-seed").set_value("3").run()
    say(at, "what do you do for fun?")
    cands = at.session_state.chat[-1]["candidates"]
    assert all(0 <= c["overlap"] <= 1 + 1e-6 and c["score"] == pytest.approx(c["loglik"] + 5 * c["overlap"], abs=1e-4)
               for c in cands)
    assert "overlap with the conversation" in tables(at)[0][0]


def serve_chat_folder(checkpoints: Path, tmp_path: Path, monkeypatch, chat: Path) -> Path:
    """Serve a copy of `chat` as the chat checkpoint, beside the tiny LM and sentiment model."""
    own = tmp_path / "own"
    shutil.copytree(chat, own / "chat")
    for task in ("lm", "sentiment"):
        (own / task).symlink_to(checkpoints / task)
    monkeypatch.setenv("NLP_CHECKPOINTS", str(own))
    return own / "chat"


def ready_index(at: AppTest, folder: Path):
    """Wait until the page's reply-index loader is done (it loads in a thread of its own)."""
    import ui

    loader = ui.index_loader(str(folder))
    assert loader.done.wait(60)
    return loader


def test_each_reply_says_where_it_came_from_and_generated_only_keeps_the_models_own(
        served_chat, checkpoints, tmp_path, monkeypatch):
    folder = serve_chat_folder(checkpoints, tmp_path, monkeypatch, served_chat)
    at = page("chat.py").run()
    assert ready_index(at, folder).status() == "ready"
    at.slider(key="chat-candidates").set_value(4).run()
    at.text_input(key="chat-seed").set_value("1").run()
    say(at, "do you like cooking?")
    reply = at.session_state.chat[-1]
    assert {c["source"] for c in reply["candidates"]} == {"retrieved"}  # the default: people's replies
    from nlp.serve import fits

    said = "A reply from the" if fits(reply["candidates"][0]) else "No reply from the training"
    assert reply["source_line"].startswith(said) and any(said in c.value for c in at.caption)
    if said == "A reply from the":  # the corpus by its name (a local file, as here, by its path)
        corpus = reply["candidates"][0]["corpus"]
        name = {"chitchat": "Chit-Chat", "cornell": "Cornell Movie-Dialogs"}.get(corpus, corpus)
        assert reply["source_line"] == f"A reply from the {name} training dialogues."
    table = tables(at)[0]
    assert "BM25 match of its context" in table[0] and "its context's meaning vs. your message" in table[0]
    assert all(r["source"].startswith("a reply from") for r in table)
    at.toggle(key="chat-generated-only").set_value(True).run()
    say(at, "what do you do for fun?")
    reply = at.session_state.chat[-1]
    assert {c["source"] for c in reply["candidates"]} == {"generated"}
    assert reply["source_line"] == "Written by the model."


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_a_missing_or_damaged_index_is_said_and_the_chat_answers_with_its_own_replies(
        served_chat, checkpoints, tmp_path, monkeypatch, damage):
    folder = serve_chat_folder(checkpoints, tmp_path, monkeypatch, served_chat)
    if damage == "missing":
        shutil.rmtree(folder / "index")
    else:
        (folder / "index" / "texts.npy").write_bytes(b"garbage")
    at = page("chat.py").run()
    assert ready_index(at, folder).status() == damage
    at.slider(key="chat-candidates").set_value(4).run()
    say(at, "hello, how are you?")
    reply = at.session_state.chat[-1]
    assert reply["content"] and {c["source"] for c in reply["candidates"]} == {"generated"}
    words = {"missing": "python -m nlp index", "damaged": "cannot be used"}[damage]
    assert any(words in note for note in reply["notes"])


def test_the_sliders_start_from_the_checkpoints_default_decoding(checkpoints, tmp_path, monkeypatch):
    """A chat checkpoint whose config.json names a default decoding (what `tune-chat --write` stores) opens
    the page with it, so the app, the CLI and `eval` decode alike."""
    with_chat_decoding(checkpoints, tmp_path, monkeypatch, {"num_candidates": 5, "temperature": 0.7,
                                                            "ranking": {"head": 1.0, "likelihood": 0.5, "mi": 0.25}})
    at = page("chat.py").run()
    assert at.slider(key="chat-candidates").value == 5 and at.slider(key="chat-temperature").value == 0.7


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_chat_input_gets_a_message_or_plain_text(checkpoints, text):
    at = say(page("chat.py").run(), text)
    if not text.replace("\x00", "").strip() or len(text) > 1000:
        assert at.warning and not at.session_state.chat
    else:
        assert len(at.session_state.chat) == 2
        shown = at.chat_message[0].markdown[0].value  # one raw HTML block: Markdown never reads it
        assert shown.startswith("<div") and shown.endswith("</div>") and "\n" not in shown
        said = at.session_state.chat[0]["content"]  # the text, control characters removed
        assert "<script>" not in shown and html.unescape(shown[shown.index(">") + 1:-6]) == said
        assert "\x00" not in at.session_state.chat[0]["content"]


def test_generate_streams_text_with_a_rate(checkpoints):
    at = page("generate.py").run()
    at.text_input(key="generate-seed").set_value("3").run()
    at.text_area[0].input("It was a dark night").run()
    at.button[0].click().run()
    assert not at.exception
    assert any("tokens/s" in c.value for c in at.caption)
    first = [m.value for m in at.markdown]
    at.button[0].click().run()
    assert [m.value for m in at.markdown] == first  # same seed, same text


def test_generate_several_samples_and_hostile_prompts(checkpoints):
    at = page("generate.py").run()
    at.number_input[0].set_value(2).run()
    at.text_area[0].input("<script>alert(1)</script> ![x](http://127.0.0.1:9/x.png)").run()
    at.button[0].click().run()
    assert not at.exception
    assert [s.value for s in at.main.subheader] == ["Sample 1", "Sample 2"]
    assert not any("<script>" in m.value for m in at.markdown)


def analyse(at: AppTest, text: str) -> AppTest:
    at.text_area[0].input(text).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def test_sentiment_labels_plainly_positive_and_negative_text(checkpoints):
    at = page("sentiment.py").run()
    labels = {}
    for text in ("Excellent product, works great, I love it, highly recommend.",
                 "Terrible, it broke after one day, a complete waste of money, avoid."):
        analyse(at, text)
        labels[text[:9]] = at.metric[0].value
        assert at.metric[1].label == "Probability" and "Rating" in at.metric[2].label
    assert labels == {"Excellent": "positive", "Terrible,": "negative"}


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_sentiment_input(checkpoints, text):
    at = page("sentiment.py").run()
    at.text_area[0].input(text).run()  # max_chars in the browser; the page checks again
    at.button[0].click().run()
    assert not at.exception
    if len(text) > 5000:  # the text stays in the box, where the user sees it, and gets no result
        assert "limit is 5,000" in at.warning[0].value and at.text_area[0].value == text and not at.metric
    elif not text.replace("\x00", "").strip():
        assert at.warning
    else:
        assert at.metric[0].value in ("positive", "negative", "neutral / mixed")
        shaded = [m.value for m in at.markdown if "<span" in m.value][0]
        assert "<script" not in shaded and "<s" not in shaded.replace("<span", "").replace("</span", "")
        assert "\x00" not in shaded


def test_a_statement_of_fact_reads_neutral_and_says_why(checkpoints, tmp_path, monkeypatch):
    """A rule with the no-opinion clause (as tune-sentiment stores it): the caption states it, and a neutral
    verdict on a text without an opinion word says which way the classifier leaned, and why."""
    from nlp.checkpoint import update_config

    own = tmp_path / "own"
    shutil.copytree(checkpoints / "sentiment", own / "sentiment")
    update_config(own / "sentiment", neutral={"rating_below": 0.25, "no_opinion_rating_below": 4.0})
    for task in ("lm", "chat"):
        (own / task).symlink_to(checkpoints / task)
    monkeypatch.setenv("NLP_CHECKPOINTS", str(own))
    at = page("sentiment.py").run()
    assert any("without a single opinion word" in c.value for c in at.caption)
    analyse(at, "The museum opens at 9 am on weekdays.")
    assert at.metric[0].value == "neutral / mixed" and at.metric[0].help.endswith("; no opinion word")
    analyse(at, "I love it, a wonderful, gorgeous film.")
    assert "no opinion word" not in (at.metric[0].help or "")


def test_batch_upload_gives_one_row_per_text(checkpoints):
    at = page("sentiment.py").run()
    csv = "id,review\n" + "".join(f'{i},"review number {i}, it was {"great" if i % 2 else "bad"}"\n'
                                  for i in range(25))
    at.file_uploader[0].upload("reviews.csv", csv.encode(), "text/csv").run()
    assert not at.exception
    # no column is named "text": the page asks which to score instead of scoring the first (here the ids)
    assert not at.dataframe and "Choose which" in at.info[0].value
    at.selectbox[0].set_value("review").run()
    table = at.dataframe[0].value
    assert len(table) == 25 and list(table.columns)[:4] == ["text", "verdict", "label", "probability"]
    assert set(table["verdict"]) <= {"positive", "negative", "neutral / mixed"}
    assert at.download_button[0].label.startswith("Download")
    at.file_uploader[0].upload("lines.txt", b"good\n\nbad\nfine\n", "text/plain").run()
    assert len(at.dataframe[0].value) == 3


@pytest.mark.parametrize("name,data,message", [
    ("big.txt", b"x\n" * 1_100_000, "limit is 2,000,000"),
    ("bin.csv", b"\x00\x01\x02", "binary"),
    ("latin.txt", "café".encode("latin-1"), "not UTF-8"),
    ("rows.txt", b"a\n" * 6000, "limit is 5,000"),
])
def test_bad_uploads_get_a_clear_message(checkpoints, name, data, message):
    at = page("sentiment.py").run()
    at.file_uploader[0].upload(name, data, "text/plain").run()
    assert not at.exception
    assert any(message in e.value for e in at.error)


@pytest.fixture
def downloads(monkeypatch) -> dict:
    """What the page offers for download: {"csv": bytes} once its download button is drawn."""
    import streamlit

    got = {}
    real = streamlit.download_button

    def keep(label, data, *a, **kw):
        got["csv"] = data
        return real(label, data, *a, **kw)
    monkeypatch.setattr(streamlit, "download_button", keep)
    return got


def test_the_download_keeps_every_uploaded_column_and_adds_the_predictions(checkpoints, downloads):
    at = page("sentiment.py").run()
    csv = "id,text,stars\n1,great film,5\n2,awful film,1\n"
    at.file_uploader[0].upload("r.csv", csv.encode(), "text/csv").run()
    import io

    import pandas as pd
    frame = pd.read_csv(io.BytesIO(downloads["csv"]))
    assert list(frame.columns)[:3] == ["id", "text", "stars"]
    assert {"predicted_verdict", "predicted_label", "predicted_probability"} <= set(frame.columns)
    assert len(frame) == 2


def significant_digits(number: str) -> int:
    m = re.fullmatch(r"-?(\d+)(?:\.(\d+))?(?:e[-+]\d+)?", number)
    assert m, number
    return len((m[1] + (m[2] or "")).lstrip("0"))


def test_models_page_shows_each_checkpoint(checkpoints):
    own = checkpoints / "sentiment"  # a copy of the fixture's model, with the shipped one's 4 test results
    trained = own.resolve()
    own.unlink()
    shutil.copytree(trained, own)
    shutil.copy(WEBAPP.parent / "checkpoints/sentiment/metrics.json", own)
    at = page("model_cards.py").run()
    assert not at.exception
    shown = tables(at)  # the fixture's chat or LM may hold results that other tests recorded, drawn first
    assert len(shown) >= 4 and all(len(t) > 3 and len(t[0]) > 2 for t in shown[-4:])
    assert [s.value for s in at.subheader][-4:] == [f"vader-{c}: test split" for c in ("movies", "tweets", "amazon",
                                                                                          "nyt")]
    for table in shown:  # numbers as a reader wants them: no "None", no 0.000000000002
        cells = [v for row in table for k, v in row.items() if k != "measure"]
        assert "None" not in cells and "nan" not in cells
        assert all(re.fullmatch(r"-?\d{1,3}(,\d{3})*", c) or significant_digits(c) <= 4 for c in cells if c), cells
    assert not any("commit" in c.value for c in at.caption)
    assert [h.value for h in at.header] == ["Chat (encoder-decoder with attention)", "Language model",
                                            "Sentiment classifier"]
    assert len(at.metric) == 9
    curves = [c.value for c in at.caption if c.value.startswith("Train loss:")]
    assert len(curves) == 3 and all("val loss" in c for c in curves)  # each chart says what its curves are
    # the chat model's training logs its validation word perplexity (issue 11's bar): a chart of its own
    assert len([c for c in at.caption if c.value.startswith("Word perplexity of the validation replies")]) == 1


def test_the_chat_box_is_drawn_before_the_model_loads(checkpoints, monkeypatch):
    """On a cold start (`python -m webapp` loads the model while the page opens) the box shows at once and a
    message sent meanwhile waits for the load, not the box for the model."""
    import streamlit

    import nlp.serve
    import ui

    ui.load_cached.clear()
    calls = []
    box, load = streamlit.chat_input, nlp.serve.open_checkpoint
    monkeypatch.setattr(streamlit, "chat_input", lambda *a, **k: calls.append("box") or box(*a, **k))
    monkeypatch.setattr(nlp.serve, "open_checkpoint", lambda *a: calls.append("load") or load(*a))
    at = page("chat.py").run()
    assert not at.exception and calls == ["box", "load"]
    say(at, "Hello there")
    assert at.chat_message[-1].name == "assistant" and calls == ["box", "load", "box"]


def test_the_pages_shared_module_does_not_import_torch():
    """The Chat page draws its box before it imports the library: `ui`, which it imports first, must not pull
    in torch (1-2 s on a cold start)."""
    import subprocess

    code = "import sys; sys.path[:0] = ['webapp']; import ui; print('torch' in sys.modules, 'nlp.serve' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=WEBAPP.parent, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_missing_checkpoint_says_how_to_rebuild_and_other_pages_work(checkpoints):
    (checkpoints / "chat").unlink()
    at = page("chat.py").run()
    assert not at.exception
    assert "not available" in at.error[0].value
    assert "configs/chat.toml" in at.code[0].value
    assert not page("generate.py").run().exception
    cards = page("model_cards.py").run()
    assert not cards.exception and "Not available" in cards.warning[0].value


def _config(folder: Path, **entries) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **entries}))


def _replace(folder: Path, name: str, data: bytes) -> None:
    """Damage a checksum cannot catch: the file and config.json agree (as after a diverged run, or an edit)."""
    (folder / name).unlink()
    (folder / name).write_bytes(data)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["files"][name] = hashlib.sha256(data).hexdigest()
    (folder / "config.json").write_text(json.dumps(cfg))


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save

    tensors = load_file(folder / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    _replace(folder, "model.safetensors", save(tensors))


def _log_folder(folder: Path) -> None:
    (folder / "train_log.jsonl").unlink()
    (folder / "train_log.jsonl").mkdir()


DAMAGE = {  # name: (what it does to a checkpoint folder, the file a message must name, does the model still load)
    "config-not-json": (lambda f: (f / "config.json").write_text("{not json"), "config.json", False),
    "config-not-object": (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json", False),
    "config-model-entry": (lambda f: _config(f, model="big"), "config.json", False),
    "config-train-entry": (lambda f: _config(f, train={"context_turns": "three"}), "config.json", False),
    "config-decoding-entry": (lambda f: _config(f, decoding={"temperature": "hot", "max_new_tokens": 2.5}),
                              "config.json", False),
    "config-neutral-entry": (lambda f: _config(f, neutral={"rating_below": -1}), "config.json", False),
    "weights-truncated": (lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000]), "model.safetensors", False),
    "weights-nan": (_nan_weights, "model.safetensors", False),
    "weights-missing": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors", False),
    "tokenizer-garbage": (lambda f: _replace(f, "tokenizer.model", b"\x08\x01garbage" * 50), "tokenizer.model",
                          False),
    "tokenizer-missing": (lambda f: (f / "tokenizer.model").unlink(), "tokenizer.model", False),
    "metrics-not-object": (lambda f: (f / "metrics.json").write_text("[1, 2]"), "metrics.json", True),
    "metrics-binary": (lambda f: (f / "metrics.json").write_bytes(bytes(range(256)) * 4), "metrics.json", True),
    "metrics-bad-entries": (lambda f: (f / "metrics.json").write_text(json.dumps(
        {"a:test": {"metrics": [1]}, "b:test": {"metrics": {"accuracy": "high", "n": True, "f1": 0.5},
                                               "baselines": {"x": 3, "y": {"accuracy": None}}},
         "c:test": {"metrics": {"f1": 0.5}, "baselines": 7}})), "metrics.json", True),
    "log-damaged": (lambda f: (f / "train_log.jsonl").write_bytes(
        b'\xff\xfe garbage\n{"step": "ten", "val_loss": "low"}\n{"step": 5, "val_loss": NaN}\n[1, 2]\n'
        b'{"step": 7, "train_loss": 3.5}\n{"step": 9, "tr'), "train_log.jsonl", True),
    "log-is-a-folder": (_log_folder, "train_log.jsonl", True),
}
PAGES = {"chat.py": "chat", "generate.py": "lm", "sentiment.py": "sentiment"}


@pytest.mark.parametrize("damage", DAMAGE)
def test_every_page_survives_a_damaged_checkpoint_file_with_a_message(trained, tmp_path, monkeypatch, damage):
    spoil, file, serves = DAMAGE[damage]
    folder = tmp_path / "checkpoints"
    for task, path in trained.items():
        shutil.copytree(path, folder / task)
        spoil(folder / task)
    monkeypatch.setenv("NLP_CHECKPOINTS", str(folder))
    for name, task in PAGES.items():
        at = page(name).run()
        assert not at.exception, (name, at.exception)
        errors = [e.value for e in at.error]
        if serves:  # an informative file: the model serves as before
            assert not errors, (name, errors)
        else:
            assert len(errors) == 1 and file in errors[0] and str(folder / task) in errors[0], (name, errors)
    cards = page("model_cards.py").run()
    assert not cards.exception, cards.exception
    warnings = [w.value for w in cards.warning]
    assert len([w for w in warnings if file in w]) >= 3, warnings  # one per model, at least
    if serves:
        assert len(cards.metric) == 9  # each model still shows its size, configuration and curves


def test_a_message_cut_off_by_the_next_one_is_answered_first(checkpoints):
    """Sending while a reply streams reruns the page and cuts that reply off: the chat still alternates."""
    at = page("chat.py").run()
    at.session_state.chat = [{"role": "user", "content": "hello?"}]  # what such a cut leaves behind
    say(at, "are you there?")
    assert [m["role"] for m in at.session_state.chat] == ["user", "assistant"] * 2
    assert [m["content"] for m in at.session_state.chat[::2]] == ["hello?", "are you there?"]


def test_a_message_over_the_limit_is_kept_to_shorten(checkpoints):
    at = page("chat.py").run()
    long = "tell me more " * 100  # 1,300 characters
    say(at, long)
    assert not at.session_state.chat and "limit is 1,000" in at.warning[0].value
    box = at.text_area(key="chat-draft")
    assert box.value == long.strip() or box.value == long
    box.set_value("tell me more").run()
    at.button(key="chat-draft-send").click().run()
    assert not at.exception
    assert [m["content"] for m in at.session_state.chat[::2]] == ["tell me more"]
    assert "chat-draft" not in at.session_state


def test_older_turns_are_mentioned_once(checkpoints):
    at = page("chat.py").run()
    at.radio(key="chat-strategy").set_value("greedy").run()
    for text in ["hello", "how are you?", "what is new?", "and then?", "really?"]:
        say(at, text)
    notes = [n for m in at.session_state.chat for n in m.get("notes", []) if "older turns" in n]
    assert len(notes) == 1


def test_non_default_decoding_is_shown_and_can_be_reset(checkpoints):
    at = page("chat.py").run()
    assert not any("differs from the defaults" in c.value for c in at.caption)
    at.slider(key="chat-temperature").set_value(2.0).run()
    assert any("temperature 2 (default 0.8)" in c.value for c in at.caption)
    at.button(key="chat-reset").click().run()
    assert at.slider(key="chat-temperature").value == 0.8
    assert not any("differs from the defaults" in c.value for c in at.caption)


def test_generate_warns_on_a_blank_or_over_long_prompt_and_keeps_it(checkpoints):
    at = page("generate.py").run()
    at.text_area[0].input("   ").run()
    at.button[0].click().run()
    assert "prompt is empty" in at.warning[0].value and not any("tokens/s" in c.value for c in at.caption)
    at.text_area[0].input("y" * 2500).run()
    at.button[0].click().run()
    assert "limit is 2,000" in at.warning[0].value and at.text_area[0].value == "y" * 2500


def test_generate_shows_readable_text_or_the_raw_tokens(checkpoints):
    at = page("generate.py").run()
    at.text_input(key="generate-seed").set_value("1").run()
    at.text_area[0].input("In 1851 , the whale @-@ ship").run()
    at.button[0].click().run()
    shown = [html.unescape(m.value) for m in at.markdown if "1851" in m.value][0]
    assert shown.startswith('<div style="white-space: pre-wrap">In 1851, the whale-ship')
    at.checkbox[1].check().run()  # Show the raw tokens
    at.button[0].click().run()
    shown = [html.unescape(m.value) for m in at.markdown if "1851" in m.value][0]
    assert shown.startswith('<div style="white-space: pre-wrap">In 1851 , the whale @-@ ship')


def test_the_page_icon_ships_with_the_app():
    from PIL import Image

    icon = WEBAPP / "static" / "icon.png"
    assert Image.open(icon).size == (128, 128)
    assert 'page_icon=str(ICON)' in (WEBAPP / "app.py").read_text() and ":material/" not in \
        (WEBAPP / "app.py").read_text().split("page_icon")[1].split(")")[0]


def test_the_served_app_hides_tracebacks_from_visitors():
    import tomllib

    from streamlit import config

    config_file = WEBAPP.parent / ".streamlit" / "config.toml"
    value = tomllib.loads(config_file.read_text())["client"]["showErrorDetails"]
    assert value == "none"
    config.set_option("client.showErrorDetails", value)  # a value this Streamlit accepts
    assert config.get_option("client.showErrorDetails") == "none"


@pytest.mark.parametrize("text,warned", [("Я не люблю этот фильм, он скучный.", True),
                                         ("Ce film est vraiment très mauvais et ennuyeux", True),
                                         ("I didn't hate it.", False), ("Great movie", False)])
def test_the_sentiment_page_says_when_a_text_does_not_look_english(checkpoints, text, warned):
    at = analyse(page("sentiment.py").run(), text)
    assert at.metric[0].value in ("positive", "negative", "neutral / mixed")  # the verdict is still given
    assert any("does not look like English" in w.value for w in at.warning) == warned


def test_the_file_verdicts_are_counted_in_their_own_colours_and_formulas_never_reach_the_download(
        checkpoints, downloads):
    at = page("sentiment.py").run()
    csv = 'text,link\ngreat film,"=HYPERLINK(""http://evil.example"",""click"")"\nawful film,@x\n'
    at.file_uploader[0].upload("r.csv", csv.encode(), "text/csv").run()
    assert not at.exception
    assert at.dataframe[0].value["text"].tolist() == ["great film", "awful film"]  # shown as uploaded
    lines = downloads["csv"].decode().splitlines()
    assert lines[1].startswith('great film,"\'=HYPERLINK(""http://evil.example"",""click"")"') and \
        lines[2].startswith("awful film,'@x,")
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    layer = spec["layer"][0]
    colours = dict(zip(layer["encoding"]["color"]["scale"]["domain"], layer["encoding"]["color"]["scale"]["range"]))
    assert sum(r["texts"] for r in layer["data"]["values"]) == 2 and layer["encoding"]["y"]["axis"]["format"] == "d"
    assert colours.get("positive", "#2e7d32") == "#2e7d32" and colours.get("negative", "#c62828") == "#c62828"


def test_a_reply_cut_off_by_the_next_message_stays_as_it_was_shown(checkpoints):
    """A message sent while the reply streams ends that run: the shown part stays (said to be cut off), and a
    ranked reply whose details were still being added stays whole; neither is written again."""
    at = page("chat.py").run()
    for streamed in (True, False):
        at.session_state.chat = [{"role": "user", "content": "hello there"},
                                 {"role": "assistant", "content": "Hi, how are", "notes": [], "pending": True,
                                  "streamed": streamed}]
        at.run()
        assert not at.exception
        chat = at.session_state.chat
        assert [m["content"] for m in chat] == ["hello there", "Hi, how are"] and "pending" not in chat[-1]
        assert any("Cut off" in n for n in chat[-1]["notes"]) == streamed


def test_the_pages_draw_without_pandas_or_altair(checkpoints):
    """Chat (its reply, candidates and attention), Generate, Sentiment on one text, and Models draw with Vega-Lite
    specs and HTML tables: pandas, pyarrow and altair cost the server about 90 MB, loaded only for a file's
    results."""
    script = f"""
import sys
sys.path[:0] = {[str(WEBAPP), str(WEBAPP.parent)]!r}
from streamlit.testing.v1 import AppTest
def page(name):
    return AppTest.from_file({str(WEBAPP)!r} + "/" + name, default_timeout=120)
at = page("chat.py").run()
at.chat_input[0].set_value("do you like cooking?").run()
assert at.session_state.chat[-1]["attention"] and at.get("vega_lite_chart"), "no attention chart"
page("generate.py").run().button[0].click().run()
at = page("sentiment.py").run()
at.button[0].click().run()
assert at.metric, "no verdict"
assert page("model_cards.py").run().get("vega_lite_chart"), "no curves"
print(sorted(m for m in ("pandas", "pyarrow", "altair") if m in sys.modules))
"""
    import subprocess

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_models_charts_read_from_zero_and_keep_their_legends_whole(checkpoints):
    at = page("model_cards.py").run()
    specs = [json.loads(c.proto.spec)["layer"][0] for c in at.get("vega_lite_chart")]
    assert specs and all(s["encoding"]["y"]["scale"]["zero"] for s in specs)
    assert all(s["encoding"]["color"]["legend"]["labelLimit"] == 0 for s in specs if "color" in s["encoding"])


def test_a_small_host_can_serve_only_some_models(checkpoints, monkeypatch):
    """NLP_MODELS=chat: only the Chat page and the Models page (with the chat model alone) are served, and the
    other models are never loaded; a wrong name is said on the page."""
    import ui

    monkeypatch.setenv("NLP_MODELS", "chat")
    loaded = []
    real = ui.load_cached
    monkeypatch.setattr(ui, "load_cached", lambda path, task: loaded.append(task) or real(path, task))
    at = AppTest.from_file(str(WEBAPP / "app.py"), default_timeout=120).run()
    assert not at.exception and at.title[0].value == "Chat"
    cards = page("model_cards.py").run()
    assert [h.value for h in cards.header] == ["Chat (encoder-decoder with attention)"]
    assert set(loaded) == {"chat"}
    monkeypatch.setenv("NLP_MODELS", "chat,vision")
    at = AppTest.from_file(str(WEBAPP / "app.py"), default_timeout=120).run()
    assert "vision" in at.error[0].value and "chat, lm, sentiment" in at.error[0].value and not at.title


def test_the_page_says_plainly_what_the_model_read_and_why_beam_search_shows_no_candidates(checkpoints):
    at = page("chat.py").run()
    say(at, " ".join(f"w{i}" for i in range(150)))  # more tokens than the model's input takes
    reply = at.session_state.chat[-1]
    said = [n for n in reply["notes"] if "its input's limit" in n]
    assert len(said) == 1 and f"The model read {len(reply['context_tokens'])} tokens" in said[0], reply["notes"]
    assert "of the last 1 turn(s) were left out" in said[0]
    at.radio(key="chat-strategy").set_value("beam").run()
    say(at, "hello there")
    notes = at.session_state.chat[-1]["notes"]
    assert any(n.startswith("Beam search writes one reply, so there are no candidates") for n in notes), notes
    assert not at.session_state.chat[-1]["candidates"]


def test_a_validation_curve_of_one_point_is_said_to_be_one(checkpoints):
    """A run that evaluated once (one epoch) draws its validation loss as a single point: the caption says so."""
    own = checkpoints / "sentiment"
    trained = own.resolve()
    own.unlink()
    shutil.copytree(trained, own)
    lines = [json.dumps({"step": s, "train_loss": 0.7 - s / 100}) for s in (10, 20, 30)]
    (own / "train_log.jsonl").write_text("\n".join([*lines, json.dumps({"step": 30, "val_loss": 0.6})]) + "\n")
    at = page("model_cards.py").run()
    said = [c.value for c in at.caption if c.value.startswith("Train loss:")]
    assert any("measured once in this run, so it is a single point" in c for c in said), said
    assert sum("single point" in c for c in said) == 1  # the other models evaluated more than once
