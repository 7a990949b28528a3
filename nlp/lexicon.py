"""VADER's sentiment lexicon (Hutto & Gilbert 2014; the vaderSentiment package, which ships it): about 7,500
words, emoticons and idioms rated by people, with rules for negation, "but", boosters and capitals. The project
uses it three ways: as the sentiment baseline in evaluation, to pick plain statements for training
(nlp.augment.neutral_sentences), and in the neutral / mixed verdict, where a text in which it finds no opinion at
all (a compound score of exactly 0: "The museum opens at 9 am on weekdays.") is a statement of fact unless the
classifier's rating is strong (nlp.verdict.NeutralRule)."""

from __future__ import annotations

from functools import cache


@cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()  # read-only after construction, so threads may share it


def compound(texts: list[str]) -> list[float]:
    """VADER's compound score of each text, -1 (negative) .. +1 (positive); exactly 0 when it finds no opinion."""
    analyzer = _analyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def has_opinion(texts: list[str]) -> list[bool]:
    """Whether VADER's lexicon finds any opinion in each text (a word, emoticon or idiom it rates)."""
    return [c != 0 for c in compound(texts)]
