"""Negation-aware augmentation of sentiment training sentences.

A classifier trained on rated sentences sees few negations ("not bad", "isn't funny") and few sentences whose
clauses disagree ("predictable, but the acting saves it"), so it learns that "bad" is negative and "good"
positive whatever surrounds them. This module writes extra training sentences from the training split itself,
with rules whose effect on the label is known:

  negate     the sentence's one copula or modal gets a "not" ("the film is funny" -> "the film is not funny"),
             or loses the one it has ("isn't funny" -> "is funny"); a verbless phrase gets a leading "Not"
             ("A moving, important film." -> "Not a moving, important film."; "Shallow and noisy." -> "Not
             shallow and noisy."); the label flips. A negated rating is weaker than the original ("not good"
             is milder than "bad"), so the rating becomes -0.5 x the old. A third of the added "not"s take
             "at all" ("not funny at all"), the commonest way to stress a negation.
  contrast   two sentences of the same domain with opposite labels joined by "but": the clause after "but"
             carries the sentence ("A, but B" takes B's label; VADER's own rule weights the part after "but"
             1.5x), with 0.75 x B's rating.

Only short, clearly rated, one-clause sentences (|rating| >= 1, at most 15 words, no "but", "so", "because"
...) with no other negation are used, so the rule's label is right as often as possible; even so a rule is
sometimes wrong ("I can say much about it"), so these rows are a minority of the data. Nothing here reads the
probe set (scripts/sentiment_probe.jsonl) or any validation or test row.
"""

from __future__ import annotations

import random
import re

from nlp.lexicon import has_opinion

COPULAS = ("is", "was", "are", "were", "am", "will", "would", "can", "could", "should", "must")
NEGATED = {"isn't": "is", "wasn't": "was", "aren't": "are", "weren't": "were", "won't": "will",
           "wouldn't": "would", "can't": "can", "couldn't": "could", "shouldn't": "should", "don't": "do",
           "doesn't": "does", "didn't": "did"}
OTHER_NEGATIONS = {"no", "never", "nothing", "nobody", "none", "neither", "nor", "hardly", "without", "barely",
                   "n't", "cannot", "nowhere", "scarcely", "lack", "lacks", "lacking"}
CLAUSE_WORDS = {"but", "yet", "although", "though", "however", "so", "because", "while", "whereas", "if",
                "unless", "until", "despite", "except"}
MAX_WORDS = 15
MIN_RATING = 1.0

# What makes a phrase more than a verbless phrase: a verb or auxiliary, a subject pronoun, a relative word.
CLAUSE_MARKERS = {*COPULAS, *NEGATED, "do", "does", "did", "has", "have", "had", "be", "been", "being", "may",
                  "might", "shall", "i", "you", "he", "she", "we", "they", "it", "this", "that", "these",
                  "those", "there", "here", "my", "your", "his", "her", "its", "our", "their", "who", "which",
                  "what", "where", "when", "how", "why", "let", "please"}
INTERJECTIONS = {"wow", "whoa", "yay", "hooray", "yes", "no", "ok", "okay", "oh", "ah", "lol", "haha", "thanks",
                 "cheers", "ugh", "damn", "yikes", "bravo", "congrats", "congratulations", "hi", "hello", "bye"}
DETERMINERS = {"a", "an", "another"}  # not "the": it starts clauses too often ("The sequences feel stagey.")
# "not just silly" is more than silly, "not too bad" is not bad at all: words whose negation is no plain flip
NOT_FLIPPED = {"just", "only", "merely", "simply", "more", "less", "too", "than", "enough"}
PHRASE_WORDS = 8
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z ,'-]*[.!]*$")  # letters, commas, hyphens; no mention, link or emoticon

_WORD = re.compile(r"[A-Za-z']+")
_SENTENCES = re.compile(r"[.!?;]\s+\S")  # a second sentence follows: "Not lazy writing. Kids deserve better."


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def negate(text: str) -> str | None:
    """The sentence with its one negation removed or its one copula/modal negated; None when the rule does
    not apply cleanly (no or several candidates, other negation words, too long)."""
    words = _words(text)
    if (not words or len(words) > MAX_WORDS or (OTHER_NEGATIONS | CLAUSE_WORDS) & set(words)
            or _SENTENCES.search(text)):
        return None  # one clause only: in "I can't see it, so I'm confused" the negation is not the point
    contracted = [w for w in words if w in NEGATED]
    nots = words.count("not")
    copulas = [w for w in words if w in COPULAS]
    if len(contracted) + nots == 1:
        if contracted:
            word = contracted[0]
            match = re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE)
            return text[:match.start()] + _same_case(NEGATED[word], match.group()) + text[match.end():]
        match = re.search(rf"\b({'|'.join(COPULAS)})\s+not\b", text, flags=re.IGNORECASE)
        return text[:match.start()] + match.group(1) + text[match.end():] if match else None
    if len(contracted) + nots == 0 and len(copulas) == 1:
        match = re.search(rf"\b{copulas[0]}\b", text, flags=re.IGNORECASE)
        if match is None:
            return None
        return text[:match.end()] + " not" + text[match.end():]
    if len(contracted) + nots == 0 and not copulas:
        return _negate_phrase(text.strip(), words)
    return None


def _negate_phrase(text: str, words: list[str]) -> str | None:
    """"Not " before a verbless phrase: one that starts with a determiner ("a real snooze"), or of at most
    four words whose first is no verb in the third person ("meandering and confusing", not "lacks depth")."""
    if (len(words) > PHRASE_WORDS or (CLAUSE_MARKERS | NOT_FLIPPED) & set(words) or "'" in text
            or not _PLAIN.match(text) or re.search(r"\b[A-Z]{2,}\b", text)):
        return None  # a clause, a phrase whose negation is no plain flip, a mention or emoticon, SHOUTING
    first = words[0]
    if INTERJECTIONS & set(words) or first == "the" or first not in DETERMINERS and (
            len(words) > 4 or re.search(r"(?<![ou])s$|ed$", first)):
        return None  # "Hooray.", "The sequences feel stagey.", "Collapses under...", "Returned after..."
    return "Not " + text[0].lower() + text[1:]


def at_all(text: str) -> str:
    """The negated sentence with "at all" before its end punctuation: "not funny" -> "not funny at all"."""
    body = text.rstrip(".!?;: ")
    return body + " at all" + text[len(body):]


def _same_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def contrast(first: str, second: str) -> str:
    """"first, but second": the first's end punctuation dropped, the second's first letter lowered."""
    head = first.strip().rstrip(".!?;,: ")
    tail = second.strip()
    if tail[:1].isupper() and not re.match(r"^(I\b|I'|[A-Z]{2})", tail):
        tail = tail[0].lower() + tail[1:]
    return f"{head}, but {tail}"


def augment(rows: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Extra rows ({"text", "label", "rating", "domain"}), at most `fraction` of len(rows): half negations (as
    many as the eligible sentences allow), as many contrasts. The input rows are not changed."""
    if fraction <= 0 or not rows:
        return []
    rng = random.Random(seed)
    want = int(round(fraction * len(rows)))
    clear = [r for r in rows if r["label"] in (0, 1) and abs(r["rating"]) >= MIN_RATING and r["text"].strip()
             and len(r["text"].split()) <= MAX_WORDS]
    out = []
    negatable = [(r, t) for r in clear if (t := negate(r["text"])) is not None]
    rng.shuffle(negatable)
    for r, text in negatable[: want // 2]:
        if len(_words(text)) > len(_words(r["text"])) and rng.random() < 1 / 3:  # a "not" was added
            text = at_all(text)
        out.append({"text": text, "label": 1 - r["label"], "rating": -0.5 * r["rating"], "domain": r.get("domain", "")})
    by_domain: dict[str, dict[int, list[dict]]] = {}
    for r in clear:
        if len(r["text"].split()) <= 15 and not CLAUSE_WORDS & set(_words(r["text"])) \
                and not _SENTENCES.search(r["text"]):
            by_domain.setdefault(r.get("domain", ""), {0: [], 1: []})[r["label"]].append(r)
    pools = [p for p in by_domain.values() if p[0] and p[1]]
    for _ in range(len(out) if pools else 0):  # as many contrasts as negations: neither lesson dominates
        pool = rng.choice(pools)
        last = rng.randint(0, 1)
        a, b = rng.choice(pool[1 - last]), rng.choice(pool[last])
        out.append({"text": contrast(a["text"], b["text"]), "label": last, "rating": 0.75 * b["rating"],
                    "domain": a.get("domain", "")})
    return out


def neutral_sentences(texts: list[str], n: int, seed: int = 0, min_words: int = 4, max_words: int = 30) -> list[str]:
    """Up to n of `texts` (shuffled by `seed`) in which VADER's lexicon finds no sentiment at all (compound score
    0) and that have min_words..max_words words: plain statements and questions of everyday talk ("I work at
    the library on campus.", "Where are you from?"). The rated training sentences are all opinions, so the
    classifier reads a sentence of fact as one too ("The museum opens at 9 am" -> positive); these rows teach
    it that such a sentence rates 0 and leans neither way. Needs vaderSentiment."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out, seen = [], set()
    for i in order:
        if len(out) >= n:
            break
        text = " ".join(texts[i].split())
        if not min_words <= len(text.split()) <= max_words or text.lower() in seen:
            continue
        if not has_opinion([text])[0]:
            seen.add(text.lower())
            out.append(text)
    return out
