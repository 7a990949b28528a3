"""Human replies as chat candidates: the reply index, the learned ranker, and the one reply path over both."""

import io
import json
import random
import shutil

import pytest
import torch

from nlp.__main__ import main
from nlp.checkpoint import load_checkpoint
from nlp.corpora import load_corpus
from nlp.decoding import GenerationConfig, make_generator
from nlp.errors import CheckpointError, GenerationError, ReplyIndexError
from nlp.ranker import RANKER_CONFIG, RANKER_WEIGHTS, load_ranker, save_ranker
from nlp.retrieval import MANIFEST, ReplyIndex, index_path, usable_reply
from nlp.serve import chat_reply, open_checkpoint, open_index
from nlp.train_ranker import hard_candidates
from tests.conftest import CHAT

ROWS = [{"context": ["hi"], "response": "hello there!", "corpus": "a"},
        {"context": ["hi"], "response": "hello there!", "corpus": "a"},          # the same pair again
        {"context": ["Hi"], "response": "Hello there!", "corpus": "b"},          # the same pair, other case
        {"context": ["x", "do you like sushi?"], "response": "I love sushi, salmon rolls most.", "corpus": "b"},
        {"context": ["what is your job?"], "response": "I teach math at a high school.", "corpus": "a"},
        {"context": ["any news?"], "response": "see http://example.com", "corpus": "a"},      # a link: left out
        {"context": ["tell me"], "response": "word " * 40, "corpus": "a"}]                    # rambling: left out


def test_the_index_keeps_each_pair_once_and_finds_replies_by_their_context(tmp_path):
    index = ReplyIndex.build(ROWS)
    assert len(index) == 3 and index.corpora == ["a", "b"]
    index.save(tmp_path / "index")
    again = ReplyIndex.load(tmp_path / "index")
    hits = again.search("Do you like sushi?", k=5)
    assert hits[0].text == "I love sushi, salmon rolls most." and hits[0].corpus == "b" and hits[0].score > 0
    assert again.context(hits[0].entry) == "do you like sushi?"  # the turn it answered, as written
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert again.search("", k=5) == [] and again.search("zzzqqq", k=5) == [] and again.search("hi", k=0) == []
    assert len(again.search("hi what is your job", k=50)) <= len(again)


def test_usable_replies_are_short_plain_text():
    assert usable_reply("I love it!") and not usable_reply("  ") and not usable_reply("go to https://x.org")
    assert not usable_reply("a " * 31) and not usable_reply("bell\x07")


@pytest.mark.parametrize("damage", ["manifest", "array", "missing"])
def test_a_damaged_index_is_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "index"
    ReplyIndex.build(ROWS).save(path)
    if damage == "manifest":
        (path / MANIFEST).write_text("{not json")
    elif damage == "array":
        data = bytearray((path / "texts.npy").read_bytes())
        data[-3] ^= 0xFF
        (path / "texts.npy").write_bytes(bytes(data))
    else:
        (path / "starts.npy").unlink()
    with pytest.raises(ReplyIndexError) as e:
        ReplyIndex.load(path)
    assert "\n" not in str(e.value) and "python -m nlp index" in str(e.value)


@pytest.fixture
def served(served_chat):
    return served_chat


def test_train_ranker_saves_a_ranker_chosen_on_validation(served):
    info = json.loads((served / RANKER_CONFIG).read_text())
    assert info["trained_on"]["rows"] == 60 and info["trained_on"]["distractors"] == 4
    assert info["trained_on"]["generated"] == 3
    assert 0 <= info["val_hits_at_1"] <= 1 and info["chance"] == round(1 / 8, 4)
    assert info["val_hits_at_1"] == max(c["val_hits_at_1"] for c in info["curve"])
    ck = open_checkpoint(served, task="chat")
    assert ck.ranker is not None and ck.ranker.overlap_weight == info["overlap_weight"]


def test_hard_candidates_put_the_own_reply_first_and_never_repeat_it(served):
    index = open_index(open_checkpoint(served, task="chat"))
    rows = [{"context": c, "response": r} for c, r in zip(load_corpus(str(CHAT))["train"]["context"][:10],
                                                           load_corpus(str(CHAT))["train"]["response"][:10])]
    for row, cands in zip(rows, hard_candidates(index, rows, 5, random.Random(0))):
        assert cands[0] == row["response"] and len(cands) == 6
        assert all(" ".join(c.lower().split()) != " ".join(row["response"].lower().split()) for c in cands[1:])


@pytest.mark.parametrize("source", ["both", "generated", "retrieved"])
def test_one_score_ranks_candidates_of_the_chosen_source(served, source):
    ck = open_checkpoint(served, task="chat")
    index = open_index(ck)
    message = load_corpus(str(CHAT))["train"]["context"][5][-1]  # a training context: the index has its reply
    cfg = GenerationConfig(num_candidates=4, max_new_tokens=8)
    reply = chat_reply(ck, [message], cfg, make_generator(0), source=source, index=index, min_match=0.0,
                       min_similarity=-1.0)
    assert "".join(reply.stream) == reply.text
    kinds = {c["source"] for c in reply.candidates}
    assert kinds == {"both": {"generated", "retrieved"}, "generated": {"generated"},
                     "retrieved": {"retrieved"}}[source]
    scores = [c["score"] for c in reply.candidates]
    assert scores == sorted(scores, reverse=True)
    assert reply.text == reply.candidates[0]["text"] and reply.source == reply.candidates[0]["source"]
    if reply.source == "retrieved":
        assert reply.corpus == str(CHAT) and reply.candidates[0]["match"] > 0
    # the attention map is the decoder reading the shown reply, whichever its source
    assert len(reply.attention) == len(reply.reply_tokens) and len(reply.attention[0]) == len(reply.context_tokens)


def test_without_an_index_every_source_falls_back_to_generated_replies(served):
    ck = open_checkpoint(served, task="chat")
    reply = chat_reply(ck, ["hello!"], GenerationConfig(num_candidates=3, max_new_tokens=6), make_generator(0),
                       source="retrieved", index=None)
    "".join(reply.stream)
    assert reply.source == "generated" and {c["source"] for c in reply.candidates} == {"generated"}
    with pytest.raises(GenerationError):
        chat_reply(ck, ["hello!"], GenerationConfig(), source="elsewhere")


def test_a_ranker_trained_on_other_weights_is_refused(served, tmp_path):
    copy = shutil.copytree(served, tmp_path / "chat")
    info = json.loads((copy / RANKER_CONFIG).read_text())
    info["model_weights"] = "0" * 64
    (copy / RANKER_CONFIG).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="other weights"):
        open_checkpoint(copy, task="chat")
    (copy / RANKER_WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="train-ranker"):
        load_ranker(load_checkpoint(copy, task="chat"))
    # the command the message names retrains over the refused ranker
    assert main(["train-ranker", "--checkpoint", str(copy), "--corpus", str(CHAT), "--val-corpus", str(CHAT),
                 "--rows", "20", "--val-rows", "10", "--distractors", "3", "--generated", "1", "--epochs", "1"]) == 0
    assert open_checkpoint(copy, task="chat").ranker is not None


def test_cli_chat_says_where_each_reply_came_from(served, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("do you like it?\n"))
    assert main(["chat", "--checkpoint", str(served), "--seed", "0", "--show-source", "--num-candidates", "4",
                 "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert any(said in out for said in ("[written by the model]", f"[a reply from the {CHAT} training dialogues]",
                                         "[nothing in the training dialogues fit well enough]"))


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_cli_chat_with_no_usable_index_is_one_line_and_exit_2(served, tmp_path, capsys, damage):
    copy = shutil.copytree(served, tmp_path / "chat")
    if damage == "missing":
        shutil.rmtree(index_path(copy))
    else:
        (index_path(copy) / "texts.npy").write_bytes(b"not an array")
    assert main(["chat", "--checkpoint", str(copy), "--source", "retrieved"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "python -m nlp index" in err


def test_eval_reports_every_chat_measure_with_its_baselines(served):
    from nlp.evaluate import evaluate

    result = evaluate(open_checkpoint(served, task="chat"), str(CHAT), "test", max_examples=25)
    m, b = result["metrics"], result["baselines"]
    for key in ("hits_at_1", "hits_at_1_model", "hits_at_1_hard", "nll_true_context", "nll_other_context",
                "context_gain", "f1", "retrieved_share"):
        assert isinstance(m[key], float), key
    assert m["context_gain"] == pytest.approx(m["nll_other_context"] - m["nll_true_context"])
    for name, key in (("overlap_ranking", "hits_at_1"), ("tfidf_ranking", "hits_at_1"),
                      ("tfidf_ranking", "hits_at_1_hard"), ("echo_last_turn", "f1"), ("echo_context", "f1"),
                      ("constant_reply", "f1")):
        assert 0 <= b[name][key] <= 1, (name, key)
    assert 0 <= m["retrieved_share"] <= 1 and all(s["source"] in ("generated", "retrieved") for s in m["samples"])
    weights = json.loads((served / "config.json").read_text())["files"]["model.safetensors"]
    assert result["weights"]["model.safetensors"] == weights and len(result["weights"]["ranker"]) == 64
    assert len(result["weights"]["index"]) == 64


def test_eval_echo_baselines_score_the_echo():
    from nlp.baselines import Tfidf, chat_baselines
    from nlp.metrics import mean_f1

    train = load_corpus(str(CHAT))["train"]
    contexts = [["a b", "we like hiking"], ["hello", "my cat sleeps"]]
    refs = ["hiking is what we like", "cats sleep"]
    b = chat_baselines(Tfidf(train), train, contexts, refs)
    assert b["echo_last_turn"]["f1"] == pytest.approx(mean_f1(["we like hiking", "my cat sleeps"], refs))
    assert b["echo_context"]["f1"] == pytest.approx(mean_f1(["a b we like hiking", "hello my cat sleeps"], refs))
    assert b["constant_reply"]["f1"] == pytest.approx(mean_f1([b["constant_reply"]["reply"]] * 2, refs))


def test_a_reply_whose_context_means_something_else_gives_way_to_a_plain_reply(served):
    ck = open_checkpoint(served, task="chat")
    index = open_index(ck)
    message = load_corpus(str(CHAT))["train"]["context"][5][-1]
    cfg = GenerationConfig(num_candidates=3, max_new_tokens=6)
    strict = chat_reply(ck, [message + "?"], cfg, make_generator(0), index=index, min_similarity=1.01)
    "".join(strict.stream)
    assert strict.source == "plain" and strict.text == "I don't know." and strict.candidates
    best = strict.candidates[0]  # the candidates stay listed, best first, each with its context's similarity
    assert best["source"] == "retrieved" and -1.0 <= best["similarity"] <= 1.0
    lenient = chat_reply(ck, [message], cfg, make_generator(0), index=index, min_similarity=-1.0)
    "".join(lenient.stream)
    assert lenient.source == "retrieved" and lenient.text == lenient.candidates[0]["text"]
    statement = chat_reply(ck, ["zzzz qqqq"], cfg, make_generator(0), index=index)  # no training turn shares a word
    "".join(statement.stream)
    assert statement.source == "plain" and statement.text == "Ok."


def test_a_plain_reply_is_shown_before_its_candidates_are_ranked(served, monkeypatch):
    """When no candidate's context means what the message says, the ranked-first cannot either: the plain reply
    comes without waiting for the ranker, and the ranked candidates follow before the stream ends."""
    import nlp.serve as serve

    ck = open_checkpoint(served, task="chat")
    index = open_index(ck)
    message = load_corpus(str(CHAT))["train"]["context"][5][-1]
    cfg = GenerationConfig(num_candidates=3, max_new_tokens=6)
    calls = []
    real = serve.candidate_scores
    monkeypatch.setattr(serve, "candidate_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    reply = chat_reply(ck, [message + "?"], cfg, make_generator(0), index=index, min_similarity=1.01)
    assert next(reply.stream) == "I don't know." and not calls and not reply.candidates
    "".join(reply.stream)
    assert calls == [1] and reply.candidates[0]["source"] == "retrieved"
    scores = [c["score"] for c in reply.candidates]
    assert scores == sorted(scores, reverse=True)
    # a candidate that fits needs the ranking before its text
    lenient = chat_reply(ck, [message], cfg, make_generator(0), index=index, min_similarity=-1.0)
    next(lenient.stream)
    assert calls == [1, 1] and lenient.text == lenient.candidates[0]["text"]


def test_a_context_turn_is_most_similar_to_itself(served):
    from nlp.ranking import context_similarity

    ck = open_checkpoint(served, task="chat")
    sims = context_similarity(ck.model, ck.tokenizer, "do you like to cook?", ["do you like to cook?", "zz qq"])
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] < sims[0]
    assert context_similarity(ck.model, ck.tokenizer, "hi", []) == []


def test_an_index_without_context_turns_still_serves_gated_by_its_match(served, tmp_path):
    """An index built before the context turns were stored (format 1) serves; the gate is the BM25 match."""
    index = open_index(open_checkpoint(served, task="chat"))
    copy = shutil.copytree(served, tmp_path / "chat")
    old = ReplyIndex(index.vocab, (index.data, index.indices, index.indptr), index.texts, index.starts,
                     index.corpus_ids, {k: v for k, v in index.info.items() if k != "files"})
    old.save(copy / "index")
    assert json.loads((copy / "index" / MANIFEST).read_text())["format"] == 1
    ck = open_checkpoint(copy, task="chat")
    index = open_index(ck)
    assert index.contexts is None and index.context(0) is None
    message = load_corpus(str(CHAT))["train"]["context"][5][-1]
    cfg = GenerationConfig(num_candidates=3, max_new_tokens=6)
    strict = chat_reply(ck, [message], cfg, make_generator(0), index=index, min_match=1e9, min_similarity=-1.0)
    "".join(strict.stream)
    assert strict.source == "plain" and "similarity" not in strict.candidates[0]
    lenient = chat_reply(ck, [message], cfg, make_generator(0), index=index, min_match=0.0, min_similarity=1.01)
    "".join(lenient.stream)
    assert lenient.source == "retrieved"


def test_search_returns_what_bm25s_retrieve_returns_on_the_same_matrix():
    import bm25s

    train = load_corpus(str(CHAT))["train"]
    index = ReplyIndex.build([{"context": c, "response": r, "corpus": "f"}
                              for c, r in zip(train["context"], train["response"])])
    ref = bm25s.BM25()
    ref.scores = {"data": index.data, "indices": index.indices, "indptr": index.indptr, "num_docs": len(index)}
    ref.vocab_dict, ref.nonoccurrence_array = index.vocab, None
    for query in [c[-1] for c in train["context"][:60]] + ["what what do you do", "hi!!"]:
        tokens = bm25s.tokenize([query], stopwords=None, show_progress=False)
        if not any(w in index.vocab for w in tokens.vocab if w):
            assert index.search(query, 10) == []
            continue
        entries, scores = ref.retrieve(tokens, k=10, show_progress=False, n_threads=1)
        theirs = [(int(e), round(float(s), 5)) for e, s in zip(entries[0], scores[0]) if s > 0]
        assert [(h.entry, round(h.score, 5)) for h in index.search(query, 10)] == theirs, query


def test_the_rankers_stop_words_are_scikit_learns():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from nlp.ranker import STOP_WORDS

    assert STOP_WORDS == ENGLISH_STOP_WORDS


def test_soft_match_reads_each_piece_by_its_nearest_counterpart_weighted_by_its_information():
    from nlp.ranker import soft_match
    from nlp.ranking import Overlap

    # pieces 1-3 orthogonal, piece 4 halfway between 1 and 2 (cosine 0.707 to each); piece 0 weighs nothing
    emb = torch.tensor([[9.0, 9, 9], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    overlap = Overlap([0.0, 1.0, 1.0, 1.0, 3.0])
    out = soft_match(emb, overlap, [[1, 0], []], [[[1], [3], [4, 0], [0], [1, 3]], [[1]]])
    assert out.shape == (6, 2)
    assert out[0].tolist() == [1.0, 1.0]   # the same piece both ways
    assert out[1].tolist() == [0.0, 0.0]   # an unrelated one
    assert out[2].tolist() == pytest.approx([0.5 ** 0.5] * 2)  # a related one, between; piece 0 is not read
    assert out[3].tolist() == [0.0, 0.0]   # a reply of weightless pieces only
    assert out[4].tolist() == pytest.approx([0.5, 1.0])  # half the reply is found; the whole context is
    assert out[5].tolist() == [0.0, 0.0]   # no context


def test_a_ranker_reads_the_features_it_was_trained_on_and_older_ones_still_load(served, tmp_path):
    from nlp.ranker import SCALARS, Ranker, features

    ck = open_checkpoint(served, task="chat")
    assert ck.ranker.features == SCALARS
    feats = features(ck.model, ck.tokenizer, [[5, 6, 7]], [[[8, 9], [10]]])
    assert feats.shape == (2, len(SCALARS))
    # a ranker saved before the soft-match features existed: 6 features, listed beside "model"
    copy = shutil.copytree(served, tmp_path / "chat")
    old = Ranker(SCALARS[:6])
    save_ranker(load_checkpoint(copy, task="chat"), old, {})
    info = json.loads((copy / RANKER_CONFIG).read_text())
    info["model"] = {"n_features": 6, "hidden": 64, "dropout": 0.1}
    info["features"] = list(SCALARS[:6])
    (copy / RANKER_CONFIG).write_text(json.dumps(info))
    loaded = open_checkpoint(copy, task="chat").ranker
    assert loaded.features == SCALARS[:6]
    assert torch.equal(loaded(feats), old.eval()(feats))
    changed = feats.clone()
    changed[:, 6:] += 1.0  # the columns it was not trained on are not read
    assert torch.equal(loaded(changed), loaded(feats))
    info["model"] = {"features": ["loglik", "mood"], "hidden": 64, "dropout": 0.1}
    (copy / RANKER_CONFIG).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="mood"):
        open_checkpoint(copy, task="chat")


def test_a_candidates_features_do_not_depend_on_its_batch_or_the_output_layers_chunk(served):
    from nlp.ranker import features

    ck = open_checkpoint(served, task="chat")
    replies = [[8, 9], [10], [11, 12, 13, 14, 15, 16, 17], [18, 19, 20]]  # padded to the longest in one batch
    together = features(ck.model, ck.tokenizer, [[5, 6, 7]], [replies])
    for i, reply in enumerate(replies):
        alone = features(ck.model, ck.tokenizer, [[5, 6, 7]], [[reply]], output_rows=3)
        assert torch.allclose(alone[0], together[i], atol=1e-4)
    assert not torch.allclose(together[0, :2], together[2, :2])  # the log-likelihoods tell the replies apart
