"""The sentiment page's verdict: positive, negative, or "neutral / mixed" when the classifier's label is not the
whole story (NeutralRule), from the thresholds a checkpoint stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nlp.checkpoint import Checkpoint

NEUTRAL = "neutral / mixed"
VERDICTS = ("negative", "positive", NEUTRAL)


@dataclass(frozen=True)
class NeutralRule:
    """When the classifier's binary label is not the whole story: the verdict is "neutral / mixed" when the
    rating head is near zero, the label's probability is low, (disagree) the rating's sign contradicts the
    label, or the text holds no opinion that VADER's lexicon knows and the rating is within
    no_opinion_rating_below of zero (a statement of fact: the rated training sentences are all opinions, so the
    classifier reads "The museum opens at 9 am on weekdays." as one, rating +0.93). The thresholds are chosen
    on validation data (`python -m nlp tune-sentiment`) and stored in the checkpoint's config.json under
    "neutral"; the default never says neutral."""
    rating_below: float = 0.0
    probability_below: float = 0.5
    disagree: bool = False
    no_opinion_rating_below: float = 0.0

    def __post_init__(self):
        for name, top in (("rating_below", 4), ("probability_below", 1), ("no_opinion_rating_below", 4)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
                raise ValueError(f"{name} must be a number from 0 to {top}, got {value!r}")
        if not isinstance(self.disagree, bool):
            raise ValueError(f"disagree must be true or false, got {self.disagree!r}")

    @classmethod
    def of(cls, ck: Checkpoint) -> NeutralRule:
        stored = ck.config.get("neutral") or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})

    def verdict(self, label: int, probability: float, rating: float | None = None, opinion: bool = True) -> str:
        """`opinion`: whether VADER's lexicon finds an opinion in the text (nlp.lexicon.has_opinion)."""
        if probability < self.probability_below:
            return NEUTRAL
        if rating is not None and (abs(rating) < self.rating_below
                                   or (self.disagree and (rating > 0) != (label == 1))
                                   or (not opinion and abs(rating) < self.no_opinion_rating_below)):
            return NEUTRAL
        return VERDICTS[label]

    def as_dict(self) -> dict:
        return asdict(self)
