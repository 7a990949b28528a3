"""Shared fixtures: a tokenizer and tiny trained checkpoints for each task, built once per test session
from the small corpora committed under tests/fixtures (no network, no corpus downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # hub look-ups fail at once instead of retrying
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
LM_TEXT = FIXTURES / "moby_dick.txt"
CHAT = FIXTURES / "chitchat.jsonl"
SENTIMENT = FIXTURES / "vader_amazon.tsv"

TINY = {
    "lm": ["--model.emb_dim", "32", "--model.hidden_size", "32", "--bptt", "16", "--batch-size", "8"],
    "chat": ["--model.emb_dim", "32", "--model.enc_hidden", "24", "--model.dec_hidden", "48",
             "--model.enc_layers", "1", "--model.dec_layers", "1", "--batch-size", "16", "--model.bridge", "pool",
             "--model.rank_dim", "16", "--empty-context-rate", "0.1"],
    "sentiment": ["--model.emb_dim", "32", "--model.hidden_size", "24", "--model.num_layers", "1",
                  "--model.attn_dim", "16", "--batch-size", "16"],
}
CORPUS = {"lm": LM_TEXT, "chat": CHAT, "sentiment": SENTIMENT}


def pytest_addoption(parser):
    group = parser.getgroup("browser tests")
    group.addoption("--checkpoints", default=None,
                    help="serve this checkpoints folder (e.g. checkpoints) instead of tiny fixture models")
    group.addoption("--screenshots", default="test-output/screenshots", help="where page screenshots go")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Corpora built by tests go to a temporary cache, never the user's."""
    os.environ["NLP_CACHE"] = str(tmp_path_factory.mktemp("nlp-cache"))
    yield


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from nlp.corpora import corpus_texts, load_corpus
    from nlp.tokenizer import train_tokenizer

    texts = [t for p in (LM_TEXT, CHAT, SENTIMENT) for t in corpus_texts(load_corpus(str(p)))]
    tok = train_tokenizer(texts, vocab_size=600)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    tok.save(path)
    tok.path = path
    return tok


def train_tiny(task: str, out: Path, tokenizer_path: Path, *extra: str) -> dict:
    from nlp.config import resolve_config
    from nlp.train import Trainer

    argv = ["--task", task, "--corpus", str(CORPUS[task]), "--out", str(out), "--tokenizer", str(tokenizer_path),
            "--log-every", "5", "--no-amp", *TINY[task], *extra]  # float32: the same fixtures on every CPU
    trainer = Trainer(resolve_config(argv))
    return trainer.fit()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tokenizer):
    """One tiny trained checkpoint per task: {"lm": Path, "chat": Path, "sentiment": Path}."""
    out = {}
    # the sentiment model trains long enough to tell plainly positive from plainly negative product reviews
    for task, extra in (("lm", ("--epochs", "2")), ("chat", ("--epochs", "2")),
                        ("sentiment", ("--epochs", "8", "--lr", "0.005", "--patience", "0"))):
        folder = tmp_path_factory.mktemp(f"ckpt-{task}")
        train_tiny(task, folder, tokenizer.path, *extra)
        out[task] = folder
    return out


@pytest.fixture(scope="session")
def served_chat(trained, tmp_path_factory):
    """The tiny chat checkpoint with a reply index of its fixture corpus and a ranker trained on it (the
    commands `python -m nlp index` and `python -m nlp train-ranker`)."""
    import shutil

    from nlp.__main__ import main

    folder = tmp_path_factory.mktemp("served") / "chat"
    shutil.copytree(trained["chat"], folder)
    assert main(["index", "--checkpoint", str(folder), "--corpus", str(CHAT)]) == 0
    assert main(["train-ranker", "--checkpoint", str(folder), "--corpus", str(CHAT), "--val-corpus", str(CHAT),
                 "--rows", "60", "--val-rows", "20", "--distractors", "4", "--generated", "3", "--epochs", "3"]) == 0
    return folder


def adjust(scores, histories, cfg, generated):
    """nlp.decoding.ScoreAdjuster at one step, from whole histories: the definition the decoding loops keep up to
    date token by token, and what the tests compare them with."""
    from nlp.decoding import ScoreAdjuster

    return ScoreAdjuster(cfg, histories, scores.shape[1], scores.device, generated)(scores)


def banned_ngram_tokens(history, n, vocab=64):
    """The tokens ScoreAdjuster bans after `history` for repeating an n-gram (n >= 1)."""
    import torch

    from nlp.decoding import GenerationConfig

    cfg = GenerationConfig(no_repeat_ngram_size=n, min_new_tokens=0)
    out = adjust(torch.zeros(1, vocab), [history], cfg, generated=len(history))
    return set(torch.isinf(out[0]).nonzero().flatten().tolist())
