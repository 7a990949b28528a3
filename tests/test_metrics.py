import math

from nlp import metrics as M


def test_perplexities_per_token_and_per_word():
    p = M.perplexities(total_nll=30.0, n_tokens=15, n_words=10)
    assert math.isclose(p["token_perplexity"], math.exp(2.0))
    assert math.isclose(p["word_perplexity"], math.exp(3.0))


def test_classification_metrics():
    m = M.classification([1, 1, 0, 0, 1], [1, 0, 0, 0, 1])
    assert m["accuracy"] == 0.8 and m["confusion"] == [[2, 1], [0, 2]]
    assert math.isclose(m["macro_f1"], (0.8 + 0.8) / 2)


def test_parlai_f1_normalises_case_punctuation_and_articles():
    assert M.token_f1("The cat, sat!", "a cat sat") == 1.0
    assert M.normalize_answer("Don't-stop, the music!") == "don t stop music"  # ParlAI: punctuation -> a space
    assert M.token_f1("dog", "cat") == 0.0
    assert math.isclose(M.token_f1("cat sat down", "cat sat"), 0.8)


def test_bleu_distinct_and_repeats():
    assert math.isclose(M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 1.0)
    assert M.bleu(["xyz"], ["the cat sat on the mat"]) < 0.1
    assert M.distinct_n(["a b a b"], 1) == 0.5
    assert M.distinct_n(["a b", "a b"], 2) == 0.5
    assert M.max_ngram_repeats("yes yes yes yes yes") == 3


def test_repetitive_replies_count_a_content_word_said_three_times():
    assert M.repeats_a_word("I work in a work class, but I don't work for my work.")
    assert not M.repeats_a_word("I don't know, I don't think so. I don't.")  # stop words only
    assert not M.repeats_a_word("Work, work.") and M.repeats_a_word("Work, work.", times=2)
    scores = M.dialogue_scores(["hiking hiking hiking", "I like hiking", ""], ["a", "b", "c"])
    assert scores["repetitive_replies"] == 1 / 3


def test_pearson():
    assert math.isclose(M.pearson([1, 2, 3], [2, 4, 6]), 1.0)
    assert math.isnan(M.pearson([1, 1], [1, 2]))
