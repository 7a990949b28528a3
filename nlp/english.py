"""Cheap tests of whether a text is English, for the models that read English only: its script, and whether it
holds any common English word (scikit-learn's English stop words, kept as data in stop_words.txt)."""

import re
import unicodedata
from pathlib import Path

STOP_WORDS = frozenset(line.strip() for line in (Path(__file__).parent / "stop_words.txt").read_text().splitlines()
                       if line.strip() and not line.startswith("#"))
_WORDS = re.compile(r"[a-z]+")


def not_english(text: str, min_words: int = 4) -> str:
    """Why `text` does not look like English ("" when it may be): most of its letters are not Latin, or it has
    at least `min_words` words and not one of them is a common English word."""
    letters = [ch for ch in text if ch.isalpha()]
    if letters:
        latin = sum(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)
        if latin < len(letters) / 2:
            return "most of its letters are not of the Latin alphabet"
    words = _WORDS.findall(text.lower())
    if len(words) >= min_words and not STOP_WORDS.intersection(words):
        return "it has none of the common English words"
    return ""
