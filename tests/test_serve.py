from pathlib import Path

import pytest

from nlp.checkpoint import load_checkpoint
from nlp.decoding import GenerationConfig, GenerationError, make_generator
from nlp.serve import chat_reply, check_text, classify, continue_text, strip_control


def test_chat_reply_reports_context_trimming_and_attention(trained):
    ck = load_checkpoint(trained["chat"])
    history = ["hello", "hi, how are you?", "good thanks, and you?", "great, what did you do today?"]
    reply = chat_reply(ck, history, GenerationConfig(strategy="greedy", max_new_tokens=10))
    text = "".join(reply.stream)
    assert text == reply.text
    assert reply.reply_tokens  # (a tiny model's greedy reply may be only whitespace)
    assert reply.turns_used == 3 and reply.turns_dropped == 1  # the fixture model keeps 3 turns
    assert len(reply.attention) == len(reply.reply_tokens) > 0
    assert all(len(row) == len(reply.context_tokens) for row in reply.attention)
    assert all(abs(sum(row) - 1) < 1e-3 for row in reply.attention)


def test_chat_reply_cuts_long_context_from_the_oldest_end_and_says_so(trained):
    ck = load_checkpoint(trained["chat"])
    reply = chat_reply(ck, ["word " * 300, "and?"], GenerationConfig(strategy="greedy", max_new_tokens=3))
    list(reply.stream)
    assert reply.tokens_dropped > 0 and len(reply.context_tokens) == 96


def test_chat_reply_refuses_an_empty_message(trained):
    ck = load_checkpoint(trained["chat"])
    with pytest.raises(GenerationError, match="empty"):
        chat_reply(ck, ["   "], GenerationConfig())


def test_continue_text_counts_tokens_and_is_seeded(trained):
    ck = load_checkpoint(trained["lm"])
    cfg = GenerationConfig(temperature=1.0, max_new_tokens=12, stop_at_eos=False)
    a = continue_text(ck, "The ship", cfg, make_generator(4))
    text_a = "".join(a.stream)
    b = continue_text(ck, "The ship", cfg, make_generator(4))
    assert "".join(b.stream) == text_a == a.text
    assert a.tokens == 12 and a.tokens_per_second > 0
    beam = continue_text(ck, "The ship", GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=5))
    assert "".join(beam.stream) == beam.text


def test_classify_keeps_order_and_handles_empty_text(trained):
    ck = load_checkpoint(trained["sentiment"])
    out = classify(ck, ["", "good", "bad " * 500])
    assert len(out) == 3 and len(out[2]["tokens"]) == 256


def test_input_checks():
    assert strip_control("a\x00b\x1bc\nd\te\x85") == ("abc\nd\te", 3)
    with pytest.raises(GenerationError, match="limit is 10"):
        check_text("x" * 11, "message", limit=10)
    with pytest.raises(GenerationError, match="NUL"):
        check_text("a\x00")


def test_the_lm_never_writes_wikitexts_unk_unless_allowed(trained, monkeypatch):
    """Even a model that would put all its mass on <unk> writes something else by default."""
    ck = load_checkpoint(trained["lm"])
    unk = ck.tokenizer.literal_unk_id
    assert unk is not None
    real = ck.model.log_probs

    def loves_unk(h):
        lp = real(h).clone()
        lp[..., unk] = 0.0  # far above every other token
        return lp
    monkeypatch.setattr(ck.model, "log_probs", loves_unk)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0)
    text = "".join(continue_text(ck, "The sea", cfg, make_generator(0)).stream)
    assert "<unk>" not in text and text
    allowed = GenerationConfig(max_new_tokens=10, temperature=1.0, allow_unk=True)
    assert "<unk>" in "".join(continue_text(ck, "The sea", allowed, make_generator(0)).stream)


def test_serving_loads_no_training_or_evaluation_packages(trained):
    """What the app does on its three pages (a reply, a detokenized continuation, a classification) imports
    neither the training side (datasets) nor nltk, whose import also loads scipy and scikit-learn (93 MB and
    2 s in the server, measured by bench/serve_memory.py)."""
    import json
    import subprocess
    import sys

    script = f"""
import json, sys
from nlp.checkpoint import load_checkpoint
from nlp.decoding import GenerationConfig
from nlp.serve import chat_reply, classify, continue_text
from nlp.tokenizer import detokenize_wikitext
cfg = GenerationConfig(max_new_tokens=5)
list(chat_reply(load_checkpoint({str(trained["chat"])!r}), ["hello"], cfg).stream)
lm = continue_text(load_checkpoint({str(trained["lm"])!r}), "The ship", cfg)
detokenize_wikitext("The ship " + "".join(lm.stream) + " did n't sail , it 's said .")
classify(load_checkpoint({str(trained["sentiment"])!r}), ["fine"])
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {{"datasets", "nltk", "scipy", "sklearn"}})))
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
    assert json.loads(out.stdout.splitlines()[-1]) == []
