"""Metrics: perplexity (per token and per word), accuracy / macro-F1 / confusion, Pearson r, BLEU (nltk),
ParlAI-style token F1, distinct-n, and two repetition checks."""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
from nltk.tokenize import TreebankWordTokenizer
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from nltk.util import ngrams

_treebank = TreebankWordTokenizer()


def words(text: str) -> list[str]:
    """Word tokens without any nltk data download (Treebank rules, lower-cased)."""
    return _treebank.tokenize(text.lower())


def perplexities(total_nll: float, n_tokens: int, n_words: int | None = None) -> dict:
    """exp(mean NLL) per model token, and per word: exp(total NLL / number of words) as WikiText reports it,
    which makes models with different tokenizers comparable (the total is the same text's)."""
    out = {"token_perplexity": math.exp(total_nll / max(n_tokens, 1)), "tokens": n_tokens}
    if n_words:
        out.update(word_perplexity=math.exp(total_nll / n_words), words=n_words)
    return out


def classification(preds: list[int], labels: list[int], num_classes: int = 2) -> dict:
    confusion = [[0] * num_classes for _ in range(num_classes)]  # rows: truth, columns: prediction
    for p, t in zip(preds, labels):
        confusion[t][p] += 1
    f1s = []
    for c in range(num_classes):
        tp = confusion[c][c]
        fp = sum(confusion[r][c] for r in range(num_classes)) - tp
        fn = sum(confusion[c]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    n = max(len(labels), 1)
    return {"accuracy": sum(p == t for p, t in zip(preds, labels)) / n, "macro_f1": sum(f1s) / num_classes,
            "confusion": confusion, "n": len(labels)}


def pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


_articles = re.compile(r"\b(a|an|the)\b")
_punct = str.maketrans(string.punctuation, " " * len(string.punctuation))


def normalize_answer(s: str) -> str:
    """ParlAI's normalisation: lower case, each punctuation mark replaced by a space (so "don't" is "don t"),
    no articles, single spaces."""
    return " ".join(_articles.sub(" ", s.lower().translate(_punct)).split())


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_f1(preds: list[str], refs: list[str]) -> float:
    return sum(token_f1(p, r) for p, r in zip(preds, refs)) / max(len(refs), 1)


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 with smoothing (method 1), on lower-cased Treebank words."""
    hyps = [words(p) for p in preds]
    return corpus_bleu([[words(r)] for r in refs], hyps, smoothing_function=SmoothingFunction().method1)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams in all texts (Li et al. 2016)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def max_ngram_repeats(text: str, n: int = 3) -> int:
    """How often the most repeated n-gram occurs in one text (1 = no repetition)."""
    counts = Counter(ngrams(words(text), n))
    return max(counts.values()) if counts else 0


def content_word_counts(text: str) -> Counter:
    """How often each content word (alphabetic, not an English stop word) occurs in a text."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return Counter(w for w in words(text) if w.isalpha() and w not in ENGLISH_STOP_WORDS)


def repeats_a_word(text: str, times: int = 3) -> bool:
    """Whether one content word occurs `times` times or more in a text: "I work in a work class ... I don't work
    for my work" does, "I don't know, I don't think so" does not."""
    return max(content_word_counts(text).values(), default=0) >= times


def dialogue_scores(preds: list[str], refs: list[str]) -> dict:
    return {"f1": mean_f1(preds, refs), "bleu": bleu(preds, refs), "distinct_1": distinct_n(preds, 1),
            "distinct_2": distinct_n(preds, 2), "empty_replies": sum(not p.strip() for p in preds),
            "max_trigram_repeats": max((max_ngram_repeats(p) for p in preds), default=0),
            "repetitive_replies": sum(map(repeats_a_word, preds)) / max(len(preds), 1)}
