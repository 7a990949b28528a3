"""The chat model that reads its context: the exact unpacked encoder, the next-reply head and its loss, the
ranking score shared by sample-and-rank and Hits@1, the context-gain measure, and tuning on validation."""

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch

from nlp import ranking as R
from nlp.checkpoint import load_checkpoint
from nlp.config import resolve_config
from nlp.data import ChatExample, collate_chat, pad
from nlp.decoding import GenerationConfig, make_generator, sample_from_state
from nlp.evaluate import derangement, evaluate, ranking_candidates
from nlp.models import Seq2Seq, Seq2SeqConfig
from nlp.rnn import make_rnn, row_mean_logprob, run_bidirectional_unpacked, run_rnn
from nlp.serve import chat_reply, default_decoding
from nlp.tokenizer import UNK
from nlp.train import Trainer
from nlp.tuning import CANDIDATE_COUNTS, MIN_DISTINCT_2, TEMPERATURES, tune_chat
from tests.conftest import CHAT, TINY

V = 50


def s2s(**kw) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, emb_dim=8, enc_hidden=6, enc_layers=2, dec_hidden=10, dec_layers=2, dropout=0.0,
               bridge="pool", rank_dim=5)
    return Seq2Seq(Seq2SeqConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("layers", [1, 2])
def test_unpacked_bidirectional_encoder_equals_the_packed_one_at_every_real_position(layers):
    torch.manual_seed(0)
    rnn = make_rnn("lstm", "fused", 8, 6, layers, 0.0, bidirectional=True)
    x = torch.randn(5, 9, 8, requires_grad=True)
    lengths = torch.tensor([9, 3, 5, 1, 7])
    real = (torch.arange(9)[None] < lengths[:, None]).unsqueeze(-1)
    packed, _ = run_rnn(rnn, x, lengths)
    unpacked = run_bidirectional_unpacked(rnn, x, lengths)
    torch.testing.assert_close(unpacked * real, packed * real)
    # and so are the gradients that flow back from the real positions
    g_packed = torch.autograd.grad((packed * real).sum(), x)[0]
    g_unpacked = torch.autograd.grad((unpacked * real).sum(), x)[0]
    torch.testing.assert_close(g_unpacked, g_packed)


def test_pool_bridge_does_not_read_padding():
    """With bridge = "pool" the decoder's start and the head's context vector ignore what follows a row's end."""
    m = s2s()
    src = torch.tensor([[5, 6, 7, 0, 0]])
    longer = torch.tensor([[5, 6, 7, 9, 9]])  # the same row, with other tokens where the padding was
    a, b = m.encode(src, torch.tensor([3])), m.encode(longer, torch.tensor([3]))
    for k in ("h", "c", "pooled"):
        torch.testing.assert_close(a[k], b[k])


def test_next_reply_head_scores_every_context_against_every_reply():
    m = s2s()
    ex = [ChatExample([5, 6, 7], [8, 9]), ChatExample([10, 11], [12, 13, 14]), ChatExample([15], [16])]
    b = collate_chat(ex)
    logits, attn, scores = m(b["src"], b["src_len"], b["tgt_in"], b["reply"], b["reply_len"])
    assert scores.shape == (3, 3) and logits.shape[:2] == b["tgt_in"].shape
    # the diagonal is each context with its own reply, as ranking.components scores it
    comp = R.components(m, [e.src for e in ex], [[e.tgt] for e in ex])
    torch.testing.assert_close(comp.head, scores.diagonal().detach())


def test_components_loglik_is_the_mean_token_log_probability(tmp_path):
    m = s2s()
    context, replies = [5, 6, 7, 8], [[9, 10], [11], [12, 13, 14]]
    comp = R.components(m, [context], [replies])
    for r, got in zip(replies, comp.loglik):
        b = collate_chat([ChatExample(context, r)])
        with torch.no_grad():
            loss, n = m.loss(b["src"], b["src_len"], b["tgt_in"], b["tgt_out"])
        assert float(got) == pytest.approx(-loss.item() / int(n), abs=1e-5)


@pytest.mark.parametrize("input_feeding", [False, True])
def test_reply_logprob_in_chunks_equals_the_mean_over_the_full_logits(input_feeding):
    """Scoring runs the output layer over a few positions at a time (chunks that cut across rows here); the
    mean log-probability per row is that of the whole (B, T, V) logits, padding left out."""
    m = s2s(input_feeding=input_feeding)
    b = collate_chat([ChatExample([5, 6, 7], [8, 9]), ChatExample([10, 11], [12, 13, 14, 15]),
                      ChatExample([16], [17])])
    with torch.no_grad():
        state = m.encode(b["src"], b["src_len"])
        full = row_mean_logprob(m.decode(state, b["tgt_in"])[0], b["tgt_out"])
        for rows in (1, 3, 7, 256):
            torch.testing.assert_close(m.reply_logprob(state, b["tgt_in"], b["tgt_out"], rows=rows), full)


def test_combine_weights_each_component():
    comp = R.Components(loglik=torch.tensor([-1.0, -2.0]), head=torch.tensor([0.0, 3.0]))
    prior = torch.tensor([-0.5, -4.0])
    assert R.combine(comp, R.RankWeights(head=0, likelihood=1, mi=0), prior).argmax() == 0
    assert R.combine(comp, R.RankWeights(head=1, likelihood=1, mi=0), prior).argmax() == 1
    # MI: reply 0 is likely anywhere (prior -0.5), reply 1 only here: log p(r|c) - 1 * log p(r) prefers 1
    torch.testing.assert_close(R.combine(comp, R.RankWeights(head=0, likelihood=1, mi=1), prior),
                               torch.tensor([-0.5, 2.0]))


def test_combine_adds_the_weighted_overlap():
    comp = R.Components(loglik=torch.tensor([-1.0, -2.0]), head=None, overlap=torch.tensor([0.1, 0.5]))
    assert R.combine(comp, R.RankWeights(likelihood=1), None).argmax() == 0
    torch.testing.assert_close(R.combine(comp, R.RankWeights(likelihood=1, overlap=4), None), torch.tensor([-0.6, 0.0]))


def test_overlap_is_the_cosine_of_weighted_sublinear_piece_counts():
    import math

    ov = R.Overlap([0.0, 1.0, 2.0, 3.0])
    got = ov([[1, 2, 2, 0], [1, 2, 2, 0], [0]], [[2, 3], [3, 3], [1]])
    ctx = {1: 1.0, 2: (1 + math.log(2)) * 2.0}  # piece 0 weighs nothing
    reply = {2: 2.0, 3: 3.0}
    norm = math.sqrt(sum(v * v for v in ctx.values())) * math.sqrt(sum(v * v for v in reply.values()))
    torch.testing.assert_close(got, torch.tensor([ctx[2] * reply[2] / norm, 0.0, 0.0]))


def test_overlap_with_reply_once_counts_a_repeated_reply_piece_once():
    ov, once = R.Overlap([0.0, 1.0, 2.0, 3.0]), R.Overlap([0.0, 1.0, 2.0, 3.0], reply_once=True)
    ctx = [[1, 3]] * 2
    plain, repeated = [3, 1, 2], [3, 3, 3, 1, 2]  # the context's rarest piece (3) said three times
    assert ov(ctx, [repeated, plain])[0] > ov(ctx, [repeated, plain])[1]  # repetition pays under 1 + log(count)
    torch.testing.assert_close(once(ctx, [repeated, plain]), once(ctx, [plain, plain]))  # not when counted once
    torch.testing.assert_close(once([[1, 2, 2, 3]], [[2, 1]]), ov([[1, 2, 2, 3]], [[2, 1]]))  # context: as before


def test_overlap_favours_a_reply_that_shares_the_rare_words_of_its_context():
    from nlp.tokenizer import SEP, Tokenizer

    tok = Tokenizer.load(Path(__file__).resolve().parent.parent / "checkpoints" / "tokenizer.model")
    ov = R.Overlap.of(tok)
    info = tok.piece_information
    assert ov.piece_weights[SEP] == 0 and info[tok.encode(" hiking")[-1]] > info[tok.encode(" the")[-1]] > 0
    ctx = tok.encode_turns(["Hi! How was your weekend?", "I went hiking in the mountains."], 64)
    on_topic, generic = tok.encode("Which mountains? I love hiking."), tok.encode("I went to the store.")
    a, b = ov([ctx, ctx], [on_topic, generic])
    assert 0 < b < a <= 1


def test_piece_information_needs_a_unigram_tokenizer(tmp_path):
    from nlp.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "a dog ran in the park", "hiking in the hills"] * 30
    unigram = train_tokenizer(texts, vocab_size=300)
    assert max(unigram.piece_information) > 0 and unigram.piece_information[0] == 0
    assert set(train_tokenizer(texts, vocab_size=300, model_type="bpe").piece_information) == {0.0}


def test_derangement_and_candidates_are_seeded_and_never_pick_the_row_itself():
    perm = derangement(50, random.Random(3))
    assert sorted(perm) == list(range(50)) and all(p != i for i, p in enumerate(perm))
    assert perm == derangement(50, random.Random(3))
    cands, truth = ranking_candidates(30, 20, random.Random(1))
    for i, (idx, t) in enumerate(zip(cands, truth)):
        assert len(set(idx)) == 20 and idx[t] == i and idx.count(i) == 1
    assert len(set(truth)) > 1  # the true reply is not always in the same place


def test_training_with_the_head_lowers_the_next_reply_loss(tmp_path, tokenizer):
    argv = ["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path), "--no-amp",
            "--log-every", "5", *TINY["chat"], "--epochs", "3", "--eval-batches", "2", "--eval-batch-size", "8"]
    trainer = Trainer(resolve_config([*argv, "--out", str(tmp_path / "a")]))
    trainer.task.val_data = trainer.task.train_data[:64]  # does it learn (the fixture is too small to generalise)?
    before = trainer.evaluate()
    trainer.fit()
    after = trainer.evaluate()
    for r in (before, after):
        assert {"val_loss", "val_context_gain", "val_rank_accuracy", "val_rank_loss"} <= set(r)
    assert after["val_rank_loss"] < before["val_rank_loss"]
    assert after["val_loss"] < before["val_loss"]


def test_validation_reports_the_word_perplexity_with_words_counted_as_eval_counts_them(tmp_path, tokenizer):
    from nlp.data import target_words
    from nlp.tokenizer import EOS, PAD

    trainer = Trainer(resolve_config(["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path),
                                      "--out", str(tmp_path / "t"), "--no-amp", *TINY["chat"]]))
    tok = trainer.task.tokenizer
    batch = collate_chat([ChatExample([5], tok.encode("Hi there,  how are you?")), ChatExample([5], tok.encode("ok"))])
    assert target_words(tok, batch["tgt_out"]) == (5 + 1) + (1 + 1)  # whitespace words, plus each reply's end
    r = trainer.evaluate()
    batches = trainer.task.val_batches()
    tokens = sum(int((b["tgt_out"] != PAD).sum()) for b in batches)
    words = sum(len(tok.decode([i for i in b["tgt_out"][k].tolist() if i not in (PAD, EOS)]).split()) + 1
                for b in batches for k in range(len(b["tgt_out"])))
    assert r["val_word_perplexity"] == pytest.approx(math.exp(r["val_loss"] * tokens / words), rel=1e-6)


def test_rank_loss_treats_a_repeated_reply_as_no_distractor(tmp_path, tokenizer):
    trainer = Trainer(resolve_config(["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path),
                                      "--out", str(tmp_path / "t"), "--no-amp", *TINY["chat"]]))
    trainer.model.eval()
    same = collate_chat([ChatExample([5, 6, 7], [40, 41]), ChatExample([8, 9], [40, 41])])
    other = collate_chat([ChatExample([5, 6, 7], [40, 41]), ChatExample([8, 9], [42, 43])])
    _, _, _, extra = trainer.task.loss(trainer.model, same, None, train=False)
    assert extra["rank_loss"] == pytest.approx(0.0, abs=1e-5)  # each context's only candidate is its own reply
    _, _, _, extra = trainer.task.loss(trainer.model, other, None, train=False)
    assert extra["rank_loss"] > 0


def test_empty_context_rate_trains_some_rows_without_their_context(tmp_path, tokenizer, monkeypatch):
    trainer = Trainer(resolve_config(["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path),
                                      "--out", str(tmp_path / "t"), "--no-amp", *TINY["chat"],
                                      "--empty-context-rate", "1.0"]))
    seen = {}

    def spy(src, src_len, *rest, **kw):
        seen["src"], seen["len"] = src.clone(), src_len.clone()
        return real(src, src_len, *rest, **kw)
    real = trainer.model.forward
    monkeypatch.setattr(trainer.model, "forward", spy)
    batch = collate_chat([ChatExample([5, 6, 7], [40, 41]), ChatExample([8, 9], [42])])
    trainer.task.loss(trainer.model, batch, None, train=True)
    assert seen["len"].tolist() == [1, 1] and seen["src"][:, 0].tolist() == R.EMPTY_CONTEXT * 2
    assert (seen["src"][:, 1:] == 0).all()


def test_word_dropout_masks_the_decoders_inputs_in_training_only(tmp_path, tokenizer, monkeypatch):
    """--word-dropout 1: every teacher-forced input after BOS becomes <unk> in training (padding stays padding),
    never in validation; the targets stay the reply."""
    trainer = Trainer(resolve_config(["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path),
                                      "--out", str(tmp_path / "t"), "--no-amp", *TINY["chat"],
                                      "--empty-context-rate", "0", "--word-dropout", "1.0"]))
    seen = []

    def spy(src, src_len, tgt_in, *rest, **kw):
        seen.append(tgt_in.clone())
        return real(src, src_len, tgt_in, *rest, **kw)
    real = trainer.model.forward
    monkeypatch.setattr(trainer.model, "forward", spy)
    batch = collate_chat([ChatExample([5, 6, 7], [40, 41, 42]), ChatExample([8, 9], [43])])
    trainer.task.loss(trainer.model, batch, None, train=True)
    trainer.task.loss(trainer.model, batch, None, train=False)
    dropped, clean = seen
    assert torch.equal(clean, batch["tgt_in"]) and clean[0, 1:].tolist() == [40, 41, 42]
    assert dropped[:, 0].tolist() == clean[:, 0].tolist()  # BOS kept
    assert dropped[0, 1:].tolist() == [UNK] * 3 and dropped[1, 1:].tolist() == [UNK, 0, 0]


def test_swapped_contexts_decode_each_reply_under_the_previous_rows_context():
    m = s2s()
    src, src_len = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 0, 0]]), torch.tensor([3, 2, 1])
    tgt = torch.tensor([[1, 20, 21], [1, 22, 0], [1, 23, 24]])
    both = m(src, src_len, tgt, swap_contexts=True)[0]
    torch.testing.assert_close(both[:3], m(src, src_len, tgt)[0])
    torch.testing.assert_close(both[3:], m(src.roll(1, 0), src_len.roll(1, 0), tgt)[0])


def test_context_contrast_adds_the_hinge_of_own_against_swapped_context(tmp_path, tokenizer):
    argv = ["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path), "--no-amp", *TINY["chat"],
            "--empty-context-rate", "0", "--label-smoothing", "0"]
    trainer = Trainer(resolve_config([*argv, "--out", str(tmp_path / "t"), "--context-contrast", "2",
                                      "--context-margin", "3"]))
    trainer.model.eval()  # no dropout: the same forward twice
    batch = collate_chat([ChatExample([5, 6, 7], [40, 41]), ChatExample([8, 9], [42]), ChatExample([10], [43, 44])])
    with_term, n, _, _ = trainer.task.loss(trainer.model, batch, None, train=True)
    trainer.cfg.context_contrast = 0.0
    without, _, _, _ = trainer.task.loss(trainer.model, batch, None, train=True)
    b = trainer.task.to_device(batch)
    logits = trainer.model(b["src"], b["src_len"], b["tgt_in"], swap_contexts=True)[0]
    gap = row_mean_logprob(logits[:3], b["tgt_out"]) - row_mean_logprob(logits[3:], b["tgt_out"])
    torch.testing.assert_close(with_term, without + 2 * torch.relu(3 - gap).mean() * n)


def test_context_contrast_training_steps_open_the_gap_on_their_batch(tmp_path, tokenizer):
    """Trainer steps on one batch: with the contrast term each reply's own context comes to beat the swapped one
    (the tiny fixture has too little signal to show it on held-out rows); without it the gap stays near 0."""
    argv = ["--task", "chat", "--corpus", str(CHAT), "--tokenizer", str(tokenizer.path), "--no-amp", *TINY["chat"],
            "--empty-context-rate", "0", "--clip", "5", "--lr", "0.01", "--warmup-steps", "0"]
    gaps = {}
    for weight in ("0", "5"):
        trainer = Trainer(resolve_config([*argv, "--out", str(tmp_path / weight), "--context-contrast", weight,
                                          "--context-margin", "2"]))
        batch = trainer.task.epoch_batches(0)[0]
        for _ in range(40):
            trainer.train_step(batch)
        trainer.model.eval()
        b = trainer.task.to_device(batch)
        with torch.no_grad():
            logits = trainer.model(b["src"], b["src_len"], b["tgt_in"], swap_contexts=True)[0]
        B = b["src"].shape[0]
        gaps[weight] = float((row_mean_logprob(logits[:B], b["tgt_out"])
                              - row_mean_logprob(logits[B:], b["tgt_out"])).mean())
    assert gaps["5"] > 1.0 and gaps["5"] > 5 * abs(gaps["0"]), gaps


def test_init_from_a_language_model_starts_the_decoder(tmp_path, tokenizer, trained):
    lm = load_checkpoint(trained["lm"]).model  # the tiny LM: emb and hidden 32
    cfg = resolve_config(["--task", "chat", "--corpus", str(CHAT), "--out", str(tmp_path / "c"), "--tokenizer",
                          str(tokenizer.path), "--init-from", str(trained["lm"]), "--model.emb_dim", "32",
                          "--model.dec_hidden", "32", "--model.dec_layers", str(lm.config.num_layers),
                          "--model.enc_hidden", "16", "--model.enc_layers", "1"])
    m = Trainer(cfg).model
    torch.testing.assert_close(m.embed.weight, lm.embed.weight)
    torch.testing.assert_close(m.decoder.weight_hh_l0, lm.rnn.weight_hh_l0)
    torch.testing.assert_close(m.decoder.bias_ih_l0, lm.rnn.bias_ih_l0)
    torch.testing.assert_close(m.out.bias, lm.out.bias)


def test_eval_reports_hits_at_1_context_gain_and_the_tfidf_ranking(trained):
    ck = load_checkpoint(trained["chat"])
    result = evaluate(ck, str(CHAT), "test", max_examples=30)
    m, b = result["metrics"], result["baselines"]
    assert 0 <= m["hits_at_1"] <= 1 and m["hits_at_1_chance"] == pytest.approx(1 / m["hits_at_1_candidates"])
    assert 0 <= b["tfidf_ranking"]["hits_at_1"] <= 1
    assert isinstance(m["context_gain"], float) and 0 <= m["contexts_in_train"] <= 1
    # eval without a decoding uses the checkpoint's default, the app's
    assert result["decoding"]["max_new_tokens"] == default_decoding(ck).max_new_tokens


def test_hits_at_1_ranks_by_the_checkpoints_own_score_overlap_included(trained):
    """With only the overlap term weighed, eval's Hits@1 is that of the overlap alone on the same candidates."""
    from nlp.corpora import load_corpus
    from nlp.evaluate import RANK_CANDIDATES, chat_rows

    ck = load_checkpoint(trained["chat"])
    ck.config["decoding"] = {"ranking": {"head": 0.0, "likelihood": 0.0, "mi": 0.0, "overlap": 1.0}}
    m = evaluate(ck, str(CHAT), "test", max_examples=30)["metrics"]
    _, examples, _ = chat_rows(ck, load_corpus(str(CHAT)), "test", 30, 0)
    k = min(RANK_CANDIDATES, len(examples))
    cands, truth = ranking_candidates(len(examples), k, random.Random(1))
    ov = R.Overlap.of(ck.tokenizer)
    scores = ov([e.src for e, idx in zip(examples, cands) for _ in idx], [examples[j].tgt for idx in cands
                                                                          for j in idx]).view(-1, k)
    assert m["hits_at_1"] == pytest.approx(float((scores.argmax(1) == torch.tensor(truth)).float().mean()))


def test_sample_and_rank_returns_distinct_candidates_best_first(trained):
    ck = load_checkpoint(trained["chat"])
    prompt = ck.tokenizer.encode_turns(["hi, how are you?"], 96)
    cfg = GenerationConfig(num_candidates=8, max_new_tokens=8, temperature=1.0)
    weights = R.RankWeights(head=1, likelihood=1, mi=0.5)
    ranked = R.sample_and_rank(ck.model, [prompt, prompt], cfg, weights, make_generator(0))
    assert len(ranked) == 2
    for cands in ranked:
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True) and 1 <= len(cands) <= 8
        assert len({tuple(c["ids"]) for c in cands}) == len(cands)
        for c in cands:
            assert c["score"] == pytest.approx(c["head"] + c["loglik"] - 0.5 * c["prior"], abs=1e-4)
    again = R.sample_and_rank(ck.model, [prompt, prompt], cfg, weights, make_generator(0))
    assert [c["ids"] for c in again[0]] == [c["ids"] for c in ranked[0]]
    # with the overlap term: its own column, in the score, measured against the prompt
    ov = R.Overlap.of(ck.tokenizer)
    weights.overlap = 3.0
    for c in R.sample_and_rank(ck.model, [prompt], cfg, weights, make_generator(0), overlap=ov)[0]:
        assert c["overlap"] == pytest.approx(float(ov([prompt], [c["ids"]])[0]))
        assert c["score"] == pytest.approx(c["head"] + c["loglik"] - 0.5 * c["prior"] + 3 * c["overlap"], abs=1e-4)


def test_sentence_cut_trims_only_replies_that_ran_into_the_length_limit():
    cut = R.SentenceCut(limit=10, ends=frozenset({7, 8}), margin=2)
    assert cut([20, 21, 7, 22, 23, 8, 24, 25]) == [20, 21, 7, 22, 23, 8]  # 8 >= 10 - 2 tokens: back to its last end
    assert cut([20, 21, 7, 22, 23, 24, 25]) == [20, 21, 7, 22, 23, 24, 25]  # 7 tokens: short enough to be whole
    assert cut([20, 7, 22, 23, 24, 25, 26, 8]) == [20, 7, 22, 23, 24, 25, 26, 8]  # ends a sentence already
    assert cut([20, 21, 22, 23, 24, 25, 26, 27, 28]) == [20, 21, 22, 23, 24, 25, 26, 27, 28]  # no end to go back to
    assert cut([]) == []


def test_sample_and_rank_scores_the_cut_replies_it_returns(trained):
    """With a SentenceCut, every candidate is a cut reply, and its likelihood is that of the cut reply + EOS (a
    pass of its own for the cut ones; the sampling steps' for the rest)."""
    ck = load_checkpoint(trained["chat"])
    prompt = ck.tokenizer.encode_turns(["hi, how are you?"], 96)
    cfg = GenerationConfig(num_candidates=12, max_new_tokens=12, temperature=1.5)
    ends = frozenset(range(5, ck.tokenizer.vocab_size, 7))  # every 7th id "ends a sentence": some cuts
    cut = R.SentenceCut(limit=12, ends=ends, margin=6)
    ranked = R.sample_and_rank(ck.model, [prompt], cfg, R.RankWeights(), make_generator(1), cut)[0]
    uncut = R.sample_and_rank(ck.model, [prompt], cfg, R.RankWeights(), make_generator(1))[0]
    whole = {tuple(c["ids"]) for c in uncut}
    assert {tuple(c["ids"]) for c in ranked} == {tuple(cut(list(ids))) for ids in whole} != whole
    expected = R.components(ck.model, [prompt], [[c["ids"] for c in ranked]]).loglik
    torch.testing.assert_close(torch.tensor([c["loglik"] for c in ranked]), expected, atol=1e-4, rtol=0)


def test_the_cut_follows_the_checkpoints_trained_reply_length_and_the_decoding(trained):
    from nlp.serve import sentence_cut

    ck = load_checkpoint(trained["chat"])
    cfg = default_decoding(ck)
    ck.config.setdefault("train", {})["max_tgt_len"] = 20
    cut = sentence_cut(ck, cfg)
    assert cfg.max_new_tokens > 19
    assert (cut.limit, cut.margin) == (19, 5) and cut.ends == ck.tokenizer.sentence_ends  # max_tgt_len counts EOS
    assert sentence_cut(ck, GenerationConfig(cut_unfinished=False)) is None
    # trained on longer replies than the sampler draws: cut where the sampler stops it, and only there
    ck.config["train"]["max_tgt_len"] = 128
    cut = sentence_cut(ck, dataclasses.replace(cfg, max_new_tokens=30))
    assert (cut.limit, cut.margin) == (30, 0)
    assert cut.unfinished([9] * 30) and not cut.unfinished([9] * 29)
    del ck.config["train"]["max_tgt_len"]  # a checkpoint that does not say: the sampler's limit alone
    assert (sentence_cut(ck, cfg).limit, sentence_cut(ck, cfg).margin) == (cfg.max_new_tokens, 0)
    assert sentence_cut(load_checkpoint(trained["lm"]), cfg) is None


def test_shipped_tokenizer_knows_which_pieces_end_a_sentence():
    from nlp.tokenizer import Tokenizer

    tok = Tokenizer.load(Path(__file__).resolve().parent.parent / "checkpoints" / "tokenizer.model")
    pieces = set(tok.pieces(sorted(tok.sentence_ends)))
    assert {".", "!", "?", "..."} <= pieces and not pieces & {",", " the", "s", ":"}


@pytest.mark.parametrize("max_new_tokens", [3, 30])
def test_sampling_reads_off_the_likelihood_that_teacher_forcing_computes(trained, max_new_tokens):
    """sample-and-rank takes each candidate's likelihood from the steps that drew it: the same number as scoring
    the reply + EOS by teacher forcing, for replies that ended, for replies cut at max_new_tokens and for
    replies cut back afterwards, whatever the temperature and penalties that shaped the draw; and shadow rows
    fed the same tokens under an empty context give the prior that `prior_loglik` computes."""
    ck = load_checkpoint(trained["chat"])
    prompts = [ck.tokenizer.encode_turns([t], 96) for t in ("hi, how are you?", "what do you do for work?")]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=1.3, repetition_penalty=1.3)
    src, src_len = pad(prompts + [R.EMPTY_CONTEXT])
    state = ck.model.encode(src, src_len)
    owner = torch.tensor([0] * 6 + [1] * 6)
    draws = sample_from_state(ck.model, {k: v[owner] for k, v in state.items()}, cfg, make_generator(3))
    replies = draws.ids
    cut = [len(r) == max_new_tokens for r in replies]
    assert len(replies) == 12 and (any(cut) if max_new_tokens == 3 else not all(cut))
    expected = R.components(ck.model, prompts, [replies[:6], replies[6:]]).loglik
    torch.testing.assert_close(torch.tensor([draws.mean_logprob(r) for r in range(12)]), expected, atol=1e-4,
                               rtol=0)
    halves = [r[:len(r) // 2] for r in replies]
    torch.testing.assert_close(torch.tensor([draws.mean_logprob(r, len(h)) for r, h in enumerate(halves)]),
                               R.components(ck.model, prompts, [halves[:6], halves[6:]]).loglik, atol=1e-4, rtol=0)

    shadowed = sample_from_state(ck.model, {k: v[torch.cat([owner, torch.full_like(owner, 2)])]
                                            for k, v in state.items()}, cfg, make_generator(3), shadowed=True)
    assert len(shadowed.ids) == 12  # the shadows draw nothing
    halves = [r[:len(r) // 2] for r in shadowed.ids]
    torch.testing.assert_close(torch.tensor([shadowed.mean_logprob(r, shadow=True) for r in range(12)]),
                               R.prior_loglik(ck.model, shadowed.ids), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor([shadowed.mean_logprob(r, len(h), shadow=True)
                                             for r, h in enumerate(halves)]),
                               R.prior_loglik(ck.model, halves), atol=1e-4, rtol=0)


def test_chat_reply_with_candidates_lists_them_and_maps_attention(trained):
    ck = load_checkpoint(trained["chat"])
    reply = chat_reply(ck, ["hello", "hi, how are you?"], GenerationConfig(num_candidates=6, max_new_tokens=8),
                       make_generator(1))
    text = "".join(reply.stream)
    assert text == reply.text == reply.candidates[0]["text"]
    assert len(reply.attention) == len(reply.reply_tokens) > 0
    assert all(abs(sum(row) - 1) < 1e-3 for row in reply.attention)


def test_tune_chat_chooses_on_validation_and_the_choice_becomes_the_default(trained, tmp_path, capsys):
    import shutil

    from nlp.__main__ import main

    folder = tmp_path / "chat"
    shutil.copytree(trained["chat"], folder)
    ck = load_checkpoint(folder)
    from nlp.corpora import CorpusError

    with pytest.raises(CorpusError, match="test split"):
        tune_chat(ck, str(CHAT), "test")
    assert main(["tune-chat", "--checkpoint", str(folder), "--corpus", str(CHAT), "--max-examples", "25",
                 "--write"]) == 0
    result = json.loads(capsys.readouterr().out)
    grid_best = max(g["hits_at_1"] for g in result["grid"])
    assert result["decoding"]["ranking"] in [{k: g[k] for k in ("head", "likelihood", "mi", "overlap")}
                                             for g in result["grid"] if g["hits_at_1"] == grid_best]
    # the temperature: the best mean F1 among those whose replies keep distinct-2 at the bar
    temps = {float(t): v for t, v in result["temperature"].items()}
    assert sorted(temps) == sorted(TEMPERATURES)
    varied = {t: v for t, v in temps.items() if v["distinct_2"] >= MIN_DISTINCT_2}
    if varied:
        assert result["decoding"]["temperature"] in varied
        assert round(varied[result["decoding"]["temperature"]]["f1"], 4) == max(round(v["f1"], 4)
                                                                               for v in varied.values())
    # the candidate count: the same rule over the counts a reply can afford
    counts = {int(n): v for n, v in result["f1"].items()}
    assert sorted(counts) == sorted(CANDIDATE_COUNTS)
    varied = {n: v for n, v in counts.items() if v["distinct_2"] >= MIN_DISTINCT_2} or counts
    assert round(varied[result["decoding"]["num_candidates"]]["f1"], 4) == max(round(v["f1"], 4)
                                                                               for v in varied.values())
    tuned = load_checkpoint(folder)  # the weights still load: config.json keeps their hashes
    assert tuned.config["decoding"]["num_candidates"] == result["decoding"]["num_candidates"]
    assert default_decoding(tuned).num_candidates == result["decoding"]["num_candidates"]
    assert default_decoding(tuned).temperature == result["decoding"]["temperature"]
    out = evaluate(tuned, str(CHAT), "test", max_examples=10)
    assert out["decoding"]["num_candidates"] == result["decoding"]["num_candidates"]
