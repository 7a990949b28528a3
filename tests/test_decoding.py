import math

import pytest
import torch

from nlp.beam import beam_search
from nlp.decoding import (
    GenerationConfig,
    GenerationError,
    choose,
    filter_scores,
    make_generator,
    sample_batch,
    sample_tokens,
)
from nlp.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from nlp.tokenizer import EOS, decode_text, stream_text
from tests.conftest import adjust, banned_ngram_tokens

V = 60


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    m = LanguageModel(LMConfig(vocab_size=V, emb_dim=16, hidden_size=16, dropout=0.0))
    with torch.no_grad():  # a peaky, untrained model: enough structure for decoding to matter
        m.out.bias.copy_(torch.randn(V) * 3)
        m.out.bias[EOS] = -10
    return m.eval()


@pytest.fixture(scope="module")
def s2s():
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(vocab_size=V, emb_dim=8, enc_hidden=8, dec_hidden=16, enc_layers=1,
                                 dec_layers=1)).eval()


PROMPT = [7, 8, 9]


def run(model, **kw):
    cfg = GenerationConfig(max_new_tokens=15, **kw)
    return list(sample_tokens(model, PROMPT, cfg, make_generator(kw.pop("seed", 0) if "seed" in kw else 0)))


@pytest.mark.parametrize("which", ["lm", "s2s"])
def test_top_k_1_temperature_0_tiny_top_p_and_beam_1_equal_greedy(which, request):
    model = request.getfixturevalue(which)
    greedy = run(model, strategy="greedy")
    assert len(greedy) > 0
    assert run(model, strategy="sample", temperature=1.0, top_k=1, top_p=1.0) == greedy
    assert run(model, strategy="sample", temperature=0.0) == greedy
    assert run(model, strategy="sample", temperature=1.0, top_p=1e-6) == greedy
    beam = beam_search(model, PROMPT, GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=15))
    assert beam[0][0] == greedy


def test_same_seed_same_sample_and_different_seeds_differ(lm):
    cfg = GenerationConfig(strategy="sample", temperature=1.5, top_p=1.0, max_new_tokens=20)
    a = list(sample_tokens(lm, PROMPT, cfg, make_generator(1)))
    b = list(sample_tokens(lm, PROMPT, cfg, make_generator(1)))
    others = {tuple(sample_tokens(lm, PROMPT, cfg, make_generator(s))) for s in range(2, 6)}
    assert a == b
    assert any(o != tuple(a) for o in others)


def test_sampling_does_not_touch_the_global_rng(lm):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    list(sample_tokens(lm, PROMPT, GenerationConfig(temperature=1.0, max_new_tokens=10), make_generator(5)))
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_ngram_of_the_banned_size_repeats(lm, n):
    for strategy in ("greedy", "sample", "beam"):
        cfg = GenerationConfig(strategy=strategy, no_repeat_ngram_size=n, max_new_tokens=30, temperature=1.0,
                               num_beams=3)
        ids = beam_search(lm, PROMPT, cfg)[0][0] if strategy == "beam" else \
            list(sample_tokens(lm, PROMPT, cfg, make_generator(0)))
        seq = PROMPT + ids  # the LM's prompt counts as text already written
        grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
        assert len(grams) == len(set(grams)), (strategy, seq)


def test_repetition_penalty_divides_the_probability_of_seen_tokens(lm):
    plain = run(lm, strategy="greedy")
    assert len(set(plain)) < len(plain)  # the peaky model loops
    # a huge penalty makes every seen token (prompt included) lose to any unseen one
    penalised = run(lm, strategy="greedy", repetition_penalty=1e9)
    assert len(set(penalised)) == len(penalised) and not set(penalised) & set(PROMPT)
    # and a mild one lowers a seen token's log-probability by exactly log(penalty)
    scores = torch.log_softmax(torch.randn(1, V), -1)
    out = adjust(scores, [[3, 5]], GenerationConfig(repetition_penalty=2.0), generated=2)
    torch.testing.assert_close(out[0, [3, 5]], scores[0, [3, 5]] - torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(out[0, 6:], scores[0, 6:])


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_min_new_tokens_bans_the_end_until_enough_tokens_are_out(s2s, strategy):
    eager = Seq2Seq(s2s.config).eval()  # a model that wants to stop at once
    eager.load_state_dict(s2s.state_dict())
    with torch.no_grad():
        eager.out.bias[EOS] = 50.0
    if strategy == "beam":
        def reply(n):
            cfg = GenerationConfig(strategy="beam", min_new_tokens=n, max_new_tokens=9)
            return beam_search(eager, PROMPT, cfg)[0][0]
    else:
        def reply(n):
            return list(sample_tokens(eager, PROMPT, GenerationConfig(strategy=strategy, min_new_tokens=n,
                                                                      max_new_tokens=9), make_generator(0)))
    assert reply(0) == []
    assert len(reply(1)) == 1 and len(reply(4)) == 4  # the end comes as soon as it is allowed
    batch = sample_batch(eager, [PROMPT, PROMPT[:1]], GenerationConfig(min_new_tokens=3, max_new_tokens=9),
                         make_generator(0))
    assert [len(r) for r in batch] == [3, 3]


def test_banned_ngram_tokens():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2, 1], 2) == {2}
    assert banned_ngram_tokens([4, 5], 1) == {4, 5}
    assert banned_ngram_tokens([1], 3) == set()
    assert banned_ngram_tokens([], 2) == set()


def _reference_bans(history: list[int], n: int) -> set[int]:
    """The definition, one window at a time."""
    if n == 1:
        return set(history)
    if len(history) < n - 1:
        return set()
    prefix = tuple(history[len(history) - n + 1:])
    return {history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == prefix}


def test_vectorised_adjust_matches_the_row_by_row_definition():
    """Rows of different lengths (finished replies stop growing) in one batch, a tiny vocabulary so that
    repeats and n-gram hits are common."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        K, n = 1 + trial % 7, 1 + trial % 4
        histories = [torch.randint(0, 6, (int(torch.randint(0, 12, (1,), generator=gen)),),
                                   generator=gen).tolist() for _ in range(K)]
        scores = torch.log_softmax(torch.randn(K, 6, generator=gen), -1)
        cfg = GenerationConfig(repetition_penalty=1.5, no_repeat_ngram_size=n)
        out = adjust(scores, histories, cfg, generated=5)
        for row, hist in enumerate(histories):
            expect = scores[row].clone()
            expect[sorted(set(hist))] -= math.log(1.5)
            expect[sorted(_reference_bans(hist, n))] = float("-inf")
            torch.testing.assert_close(out[row], expect)
            assert banned_ngram_tokens(hist, n) == _reference_bans(hist, n)


def test_adjusting_token_by_token_matches_adjusting_from_the_whole_history():
    """The decoding loops keep the bans up to date as rows grow, finish (rows leave) and split (beam search
    continues a row twice); at every step the result equals `adjust` computed afresh from the histories."""
    from nlp.decoding import ScoreAdjuster
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        cfg = GenerationConfig(repetition_penalty=(1.0, 1.5, 0.7)[trial % 3], no_repeat_ngram_size=trial % 4,
                               banned_ids=((2,), ())[trial % 2], min_new_tokens=2)
        histories = [torch.randint(0, 7, (int(torch.randint(0, 6, (1,), generator=gen)),),
                                   generator=gen).tolist() for _ in range(1 + trial % 3)]
        adjuster = ScoreAdjuster(cfg, histories, 7)
        for step in range(8):
            scores = torch.log_softmax(torch.randn(len(histories), 7, generator=gen), -1)
            torch.testing.assert_close(adjuster(scores), adjust(scores, histories, cfg, generated=step))
            parents = torch.randint(0, len(histories), (int(torch.randint(1, 4, (1,), generator=gen)),),
                                    generator=gen).tolist()
            tokens = torch.randint(0, 7, (len(parents),), generator=gen).tolist()
            adjuster.advance(parents, tokens)
            histories = [histories[p] + [t] for p, t in zip(parents, tokens)]


def test_filters_keep_what_they_promise():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **kw: torch.isfinite(filter_scores(scores, GenerationConfig(**kw))).sum().item()  # noqa: E731
    assert kept(top_k=2, top_p=1.0, temperature=1.0) == 2
    assert kept(top_p=0.7, temperature=1.0) == 2       # 0.5 + 0.3 reaches 0.7
    assert kept(top_p=0.85, temperature=1.0) == 3
    assert kept(top_p=1.0, min_p=0.5, temperature=1.0) == 2  # keeps p >= 0.25


def test_beam_search_returns_sorted_n_best(lm):
    cfg = GenerationConfig(strategy="beam", num_beams=4, num_return_sequences=3, max_new_tokens=8)
    best = beam_search(lm, PROMPT, cfg)
    assert len(best) == 3
    assert [s for _, s in best] == sorted((s for _, s in best), reverse=True)
    assert len({tuple(ids) for ids, _ in best}) == 3


def test_streaming_pieces_join_to_the_whole_text(tokenizer, trained):
    from nlp.checkpoint import load_checkpoint

    ck = load_checkpoint(trained["lm"])
    prompt = ck.tokenizer.encode("It was")
    cfg = GenerationConfig(temperature=1.0, top_p=1.0, max_new_tokens=40)
    ids = list(sample_tokens(ck.model, prompt, cfg, make_generator(3)))
    pieces = list(stream_text(ck.tokenizer, iter(ids), prompt))
    assert len(pieces) > 1
    assert "".join(pieces) == decode_text(ck.tokenizer, ids, prompt)
    from nlp.serve import continue_text  # the front ends' path streams the very same text
    assert "".join(continue_text(ck, "It was", cfg, make_generator(3)).stream) == "".join(pieces)


def test_stream_holds_back_incomplete_utf8(tokenizer):
    ids = tokenizer.encode("ab 🙂 cd")
    pieces = list(stream_text(tokenizer, iter(ids)))
    assert "".join(pieces) == "ab 🙂 cd"
    assert not any("\ufffd" in p for p in pieces)


def test_batch_sampling_matches_one_at_a_time_for_greedy(s2s):
    prompts = [[7, 8, 9], [10, 11], [12, 13, 14, 15]]
    cfg = GenerationConfig(strategy="greedy", max_new_tokens=10)
    batch = sample_batch(s2s, prompts, cfg)
    single = [list(sample_tokens(s2s, p, cfg)) for p in prompts]
    assert batch == single


def test_bad_settings_are_clear_errors(s2s):
    with pytest.raises(GenerationError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(GenerationError, match="strategy"):
        GenerationConfig(strategy="nucleus")
    with pytest.raises(GenerationError, match="temperature"):
        GenerationConfig(temperature=-1)
    with pytest.raises(GenerationError, match="non-empty"):
        list(sample_tokens(s2s, [], GenerationConfig()))


def test_banned_ids_are_never_chosen(lm):
    favourite = int(lm.out.bias.argmax())
    assert favourite in run(lm, strategy="greedy")
    for kw in ({"strategy": "greedy"}, {"temperature": 1.5}):
        assert favourite not in run(lm, banned_ids=(favourite,), **kw)


SAMPLING = [dict(top_p=0.9), dict(top_k=40), dict(top_k=40, top_p=0.8), dict(min_p=0.1), dict(top_p=0.95, min_p=0.05),
            dict(temperature=1.3, top_p=0.9), dict(temperature=0.5, top_k=255)]


@pytest.mark.parametrize("settings", SAMPLING, ids=[str(s) for s in SAMPLING])
def test_the_candidates_keep_what_filtering_the_whole_vocabulary_keeps(settings):
    from nlp.decoding import nucleus_size

    torch.manual_seed(0)
    scores = torch.log_softmax(torch.randn(300, 3000) * 6, -1)  # peaked enough that 256 candidates suffice
    cfg = GenerationConfig(**settings)
    kept = torch.isfinite(filter_scores(scores, cfg)).sum(-1).tolist()
    top = torch.topk(torch.softmax(scores / cfg.temperature, -1), 256, -1).values.tolist()
    assert [nucleus_size(row, cfg, 3000) for row in top] == kept


@pytest.mark.parametrize("settings", [dict(top_p=0.9), dict(top_k=3, temperature=1.3), dict(min_p=0.2, top_p=0.95),
                                      dict(temperature=0.7, top_p=1.0)], ids=str)
@pytest.mark.parametrize("vocab", [6, 600], ids=["whole vocabulary", "among candidates"])
def test_sampling_draws_from_the_filtered_distribution(settings, vocab):
    """100,000 seeded draws of one distribution: each token's share is its filtered probability (the
    standard error of a share is at most 0.0016), whether it is drawn among the candidates or the whole
    vocabulary."""
    from nlp.decoding import CANDIDATES

    logits = torch.full((vocab,), -30.0)
    logits[:6] = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5])
    scores = torch.log_softmax(logits, -1).expand(100_000, -1)
    cfg = GenerationConfig(**settings)
    assert (vocab > CANDIDATES[0]) == (vocab == 600)
    drawn = torch.tensor(choose(scores, cfg, make_generator(0)))
    share = torch.bincount(drawn, minlength=vocab)[:6] / len(drawn)
    expected = torch.softmax(filter_scores(scores[:1], cfg), -1)[0, :6]
    assert (share - expected).abs().max() < 0.008, (share, expected)


def test_a_flat_distribution_is_drawn_from_the_whole_vocabulary():
    from nlp.decoding import CANDIDATES, nucleus_size

    vocab = 4 * CANDIDATES[-1]
    flat = [1 / vocab] * vocab
    for k in CANDIDATES:
        assert nucleus_size(flat[:k], GenerationConfig(top_p=0.9), vocab) is None  # the nucleus is 7,373 tokens
        assert nucleus_size(flat[:k], GenerationConfig(top_p=1.0), vocab) is None  # nothing is cut
        assert nucleus_size(flat[:k], GenerationConfig(top_k=50, top_p=1.0), vocab) is None  # all tie with the 50th
    assert nucleus_size(flat[:CANDIDATES[0]], GenerationConfig(top_p=0.2), vocab) is None  # 1,639 tokens
    assert nucleus_size(flat[:CANDIDATES[1]], GenerationConfig(top_p=0.2), vocab) == 1639
    assert nucleus_size(flat, GenerationConfig(top_p=0.9), vocab) == 7373
    scores = torch.log_softmax(torch.zeros(4000, vocab), -1)
    drawn = torch.tensor(choose(scores, GenerationConfig(top_p=0.5), make_generator(0)))
    assert drawn.unique().numel() > 2000  # 4,000 draws among the nucleus' 4,096 tokens
    drawn = torch.tensor(choose(scores, GenerationConfig(top_p=0.2), make_generator(0)))
    assert 1200 < drawn.unique().numel() <= 1639  # among the second tier's candidates


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_nonfinite_model_scores_raise_the_projects_own_error(strategy):
    """A model whose scores overflowed gives NonFiniteScores (a GenerationError: the app shows it as a message),
    not tokens drawn from NaN."""
    from nlp.errors import NonFiniteScores

    torch.manual_seed(0)
    m = LanguageModel(LMConfig(vocab_size=V, emb_dim=16, hidden_size=16, dropout=0.0)).eval()
    with torch.no_grad():
        m.out.bias[7] = float("nan")
    cfg = GenerationConfig(strategy=strategy, max_new_tokens=5)
    with pytest.raises(NonFiniteScores, match="not finite"):
        if strategy == "beam":
            beam_search(m, [5, 6], cfg)
        else:
            list(sample_tokens(m, [5, 6], cfg, make_generator(0)))
    assert issubclass(NonFiniteScores, GenerationError)
