"""The trivial systems every model is measured beside, in the same run (`python -m nlp eval`): a number that
one of these beats says nothing about the model.

  language model  add-one unigram over the training words
  sentiment       Naive Bayes over a bag of words (nltk), the VADER lexicon's compound score
  chat            TF-IDF retrieval (the nearest training context's reply) and ranking, the most frequent reply,
                  a constant reply, echoing the last turn or the whole context; TF-IDF's nearest contexts also
                  give the hard distractors of Hits@1
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from nlp import lexicon
from nlp import metrics as M


def unigram_baseline(train_texts: list[str], test_texts: list[str]) -> dict:
    """Add-one unigram over whitespace words + end-of-line markers: the floor any LM must clear."""
    counts = Counter(w for t in train_texts for w in t.split())
    counts["<eol>"] = len(train_texts)
    total, vocab = sum(counts.values()), len(counts) + 1
    nll = n = 0
    for t in test_texts:
        for w in t.split() + ["<eol>"]:
            nll -= math.log((counts.get(w, 0) + 1) / (total + vocab))
            n += 1
    return {"word_perplexity": math.exp(nll / n)}


def _nb_features(text: str) -> dict:
    return {w: True for w in M.words(text)}


def sentiment_baselines(train, test) -> dict:
    import nltk

    labelled_train = [(t, y) for t, y in zip(train["text"], train["label"]) if y >= 0]
    nb = nltk.NaiveBayesClassifier.train([(_nb_features(t), y) for t, y in labelled_train])
    texts = [t for t, y in zip(test["text"], test["label"]) if y >= 0]
    labels = [y for y in test["label"] if y >= 0]
    out = {"naive_bayes_bow": {k: v for k, v in M.classification(
        [nb.classify(_nb_features(t)) for t in texts], labels).items() if k != "confusion"}}
    try:
        out["vader_lexicon"] = {k: v for k, v in M.classification(vader_labels(texts), labels).items()
                                if k != "confusion"}
    except ImportError:
        out["vader_lexicon"] = {"skipped": "pip install vaderSentiment==3.3.2"}
    return out


def vader_labels(texts: list[str]) -> list[int]:
    """The VADER lexicon's label (compound score >= 0 is positive); needs vaderSentiment."""
    return [int(c >= 0) for c in lexicon.compound(texts)]


class Tfidf:
    """The TF-IDF baselines' one vectorizer, fitted on the training split's turns and replies (word 1-2 grams,
    sublinear counts): retrieval (the training context whose last turn is nearest to the message -> its
    reply), ranking (candidates by cosine with the context) and the hard distractors (the replies of the
    training contexts nearest to a message)."""

    def __init__(self, train):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.replies = list(train["response"])
        last_turns = [c[-1] if c else "" for c in train["context"]]
        self.vec = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True)
        self.vec.fit(last_turns + self.replies)
        self.X = self.vec.transform(last_turns)

    def nearest(self, messages: list[str], k: int) -> list[list[int]]:
        """For each message, the k training rows whose last context turn is most like it, nearest first."""
        Q = self.vec.transform(messages)
        out = []
        for start in range(0, Q.shape[0], 256):  # (q, n) similarity in slices keeps memory flat
            sims = (Q[start:start + 256] @ self.X.T).toarray()
            top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
            out += [row[np.argsort(-s[row], kind="stable")].tolist() for row, s in zip(top, sims)]
        return out

    def reply(self, contexts: list[list[str]]) -> list[str]:
        """The retrieval baseline: the reply of the nearest training context to each context's last turn."""
        return [self.replies[rows[0]] for rows in self.nearest([c[-1] if c else "" for c in contexts], 1)]

    def cosine(self, texts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        """The cosine of each text with each of its candidates."""
        Q = self.vec.transform(texts)
        return [(self.vec.transform(cands) @ Q[i].T).toarray().ravel().tolist()
                for i, cands in enumerate(candidates)]


def hard_distractors(tfidf: Tfidf, contexts: list[list[str]], refs: list[str], k: int) -> list[list[str]]:
    """For each row, k distinct replies of the training contexts nearest to its last turn by TF-IDF, none of
    them its own reply's text: distractors on the same topic, which only a ranker that reads the message as
    a whole can tell from the reply the row got."""
    out = []
    for ref, rows in zip(refs, tfidf.nearest([c[-1] for c in contexts], 20 * k)):
        own, kept = M.normalize_answer(ref), []
        for j in rows:
            text = tfidf.replies[j]
            if M.normalize_answer(text) != own and text not in kept:
                kept.append(text)
            if len(kept) == k:
                break
        out.append(kept)
    return out


CONSTANT_REPLY = "I do not know, what about you?"


def chat_baselines(tfidf: Tfidf, train, contexts: list[list[str]], refs: list[str]) -> dict:
    """Trivial systems' scores beside the model's: retrieval, the most frequent reply, a constant reply, and
    echoing the last turn or the whole context."""
    train_resp = list(train["response"])
    common = Counter(M.normalize_answer(r) for r in train_resp).most_common(1)[0][0]
    frequent = next(r for r in train_resp if M.normalize_answer(r) == common)
    return {"tfidf_retrieval": M.dialogue_scores(tfidf.reply(contexts), refs),
            "most_frequent_reply": {"reply": frequent, **M.dialogue_scores([frequent] * len(refs), refs)},
            "constant_reply": {"reply": CONSTANT_REPLY, "f1": M.mean_f1([CONSTANT_REPLY] * len(refs), refs)},
            "echo_last_turn": {"f1": M.mean_f1([c[-1] for c in contexts], refs)},
            "echo_context": {"f1": M.mean_f1([" ".join(c) for c in contexts], refs)}}
