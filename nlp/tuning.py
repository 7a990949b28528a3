"""Choosing a checkpoint's serving settings on validation data, never on test: `tune-chat` (the chat's default
decoding and ranking weights), `tune-sentiment` (when the verdict reads neutral / mixed) and `probe-sentiment`
(accuracy on the hand-written negation, contrast and sarcasm phrases). Each reads the same harness as `eval`
(nlp.evaluate) and writes its choice into the checkpoint's config.json only when asked.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

from nlp import lexicon
from nlp import metrics as M
from nlp import ranking as R
from nlp.checkpoint import Checkpoint, CheckpointError
from nlp.corpora import CorpusError, load_corpus
from nlp.decoding import GenerationConfig
from nlp.evaluate import NEUTRAL_BAND, RANK_CANDIDATES, chat_replies, chat_rows, ranking_candidates, three_way
from nlp.serve import classify, default_decoding
from nlp.verdict import NEUTRAL, NeutralRule

PROBE = Path(__file__).resolve().parent.parent / "scripts" / "sentiment_probe.jsonl"


def refuse_test(split: str) -> None:
    """Tuning reads validation (or train) data only: the test split is read once, for the report."""
    if split == "test":
        raise CorpusError("tune on validation (or train) data: the test split is read once, for the report")


MIN_RATING_BAND = 0.25  # the app's promise: a rating this near zero always reads neutral / mixed


def tune_sentiment(ck: Checkpoint, corpora: list[str], split: str = "validation") -> dict:
    """Choose the NeutralRule on validation rows of `corpora` (pooled, neutral ratings kept) by the macro-F1 of
    the three verdicts, with what the choice rests on beside it: the best rule without the lexicon clause and
    without the rating band's floor, never saying neutral, each corpus's macro-F1, and how often the lexicon
    finds no opinion. The rating band starts at MIN_RATING_BAND, not 0: a rating near zero always reads
    neutral / mixed, and the grid chooses how near. Without that floor, once the no-opinion clause is on, the
    grid drops the rating and probability clauses, and a line the classifier calls positive at p 0.51 with a
    rating of -0.09 would read positive."""
    refuse_test(split)
    texts, ratings, sources = [], [], []
    for name in corpora:
        ds = load_corpus(name)[split]
        texts += list(ds["text"])
        ratings += list(ds["rating"])
        sources += [name] * len(ds)
    base = classify(ck, texts, rule=NeutralRule())
    if not base or "rating" not in base[0]:
        raise CheckpointError("the neutral rule needs a model with a rating head")

    def scored(rule: NeutralRule, idx: range | list[int] = range(len(base))) -> dict:
        rows = [base[i] for i in idx]
        for r in rows:
            r["verdict"] = rule.verdict(r["label"], r["probability"], r["rating"], r["opinion"])
        m = three_way(rows, [ratings[i] for i in idx])
        return {**rule.as_dict(), "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                "neutral_rate": sum(r["verdict"] == NEUTRAL for r in rows) / len(rows)}

    grid = [scored(NeutralRule(*values)) for values in itertools.product(
        (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), (0.5, 0.6, 0.7, 0.8, 0.9), (False, True),
        (0.0, 0.5, 1.0, 1.5, 2.0, 3.0))]

    def best(rows: list[dict]) -> dict:
        return max(rows, key=lambda g: round(g["macro_f1"], 4))  # the first of equals: the fewest neutrals

    def rule_of(g: dict) -> NeutralRule:
        return NeutralRule(**{k: g[k] for k in NeutralRule().as_dict()})

    allowed = [g for g in grid if g["rating_below"] >= MIN_RATING_BAND]
    chosen, plain = best(allowed), best([g for g in allowed if g["no_opinion_rating_below"] == 0])
    no_opinion = [i for i, r in enumerate(base) if not r["opinion"]]
    opinion = [i for i, r in enumerate(base) if r["opinion"]]

    def near_zero(idx: list[int]) -> float:  # the share of these rows that people rated near zero
        return sum(abs(ratings[i]) < NEUTRAL_BAND for i in idx) / max(len(idx), 1)

    report = {
        "chosen": chosen, "without_lexicon_clause": plain, "without_rating_floor": best(grid),
        "never_neutral": scored(NeutralRule()),
        "by_corpus": {name: {which: scored(rule_of(g), [i for i, s in enumerate(sources) if s == name])["macro_f1"]
                             for which, g in (("chosen", chosen), ("without_lexicon_clause", plain))}
                      for name in corpora},
        "no_opinion_rows": len(no_opinion) / len(base),
        "rated_near_zero": {"no_opinion": near_zero(no_opinion), "opinion": near_zero(opinion)},
    }
    return {"neutral": rule_of(chosen).as_dict(),
            "tuned_on": {"corpora": corpora, "split": split, "rows": len(texts), "neutral_band": NEUTRAL_BAND,
                         "macro_f1": chosen["macro_f1"]},
            "report": report, "grid": grid}


def probe_sentiment(ck: Checkpoint, path: Path = PROBE) -> dict:
    """Accuracy on a probe file (jsonl rows {"text", "label", "kind"}), overall and by kind, with the misses. A
    row labelled 1 or 0 is right when the binary label matches; a row labelled "neutral"
    (scripts/sentiment_neutral_probe.jsonl) when the verdict is "neutral / mixed". The VADER lexicon's baseline
    answers the same way (a neutral row: |compound| < 0.05, VADER's own neutral band)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    results = classify(ck, [r["text"] for r in rows])
    hits = [res["verdict"] == NEUTRAL if r["label"] == "neutral" else res["label"] == r["label"]
            for r, res in zip(rows, results)]
    kinds = sorted({r.get("kind", "") for r in rows})

    def scored(kind: str | None, right: list[bool]) -> dict:
        idx = [i for i, r in enumerate(rows) if kind is None or r.get("kind", "") == kind]
        return {"n": len(idx), "accuracy": sum(right[i] for i in idx) / max(len(idx), 1)}
    try:
        vader = lexicon.compound([r["text"] for r in rows])
        right = [abs(v) < 0.05 if r["label"] == "neutral" else int(v >= 0) == r["label"] for r, v in zip(rows, vader)]
        baselines = {"vader_lexicon": scored(None, right)["accuracy"]}
    except ImportError:
        baselines = {}
    return {"file": str(path), **scored(None, hits), "baselines": baselines,
            "by_kind": {k: scored(k, hits) for k in kinds},
            "misses": [{"text": r["text"], "label": r["label"], "predicted": res["label"],
                        "probability": round(res["probability"], 3), "rating": res.get("rating"),
                        "verdict": res["verdict"]}
                       for r, res, h in zip(rows, results, hits) if not h]}


# --------------------------------------------------------------------------- chat
# The temperatures tune-chat tries, and the variety a default must keep: distinct-2 (distinct word pairs over
# all word pairs of the replies) at or above issue 11's bar, so a lower temperature cannot buy word overlap
# with the same few safe replies.
TEMPERATURES = (0.6, 0.7, 0.8, 0.9, 1.0)
MIN_DISTINCT_2 = 0.3
# Candidate counts a default may use: a reply must take at most 0.6 s on the development CPU (issue 11);
# there 16 candidates take 0.48-0.54 s and 24 take 0.59-0.63 s, too near the bar (bench/chat_reply.py). More stay
# a choice in the sidebar.
CANDIDATE_COUNTS = (1, 4, 8, 16)
# Weights of the overlap term (nlp.ranking.Overlap, a cosine in [0, 1]) that tune-chat tries; the head's score
# is a learned scale (about 20 for the shipped model) times a cosine, the likelihood terms a few nats a token.
OVERLAP_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0, 64.0, 96.0)


def ranking_components(model, examples: list, cands: list[list[int]], prior: bool, overlap: R.Overlap | None = None):
    """Components of the older ranking score for each row's candidates (rows x k), the overlap term if given
    one, and the prior term if asked."""
    comp = R.components(model, [e.src for e in examples], [[examples[j].tgt for j in idx] for idx in cands])
    if overlap is not None:
        comp.overlap = overlap([e.src for e, idx in zip(examples, cands) for _ in idx],
                               [examples[j].tgt for idx in cands for j in idx])
    prior_scores = None
    if prior:
        own = R.prior_loglik(model, [e.tgt for e in examples])
        prior_scores = torch.stack([own[idx] for idx in cands]).view(-1)
    return comp, prior_scores


@torch.no_grad()
def tune_chat(ck: Checkpoint, corpus: str, split: str = "validation", max_examples: int = 1000, seed: int = 0,
              candidate_counts: tuple[int, ...] = CANDIDATE_COUNTS, f1_examples: int = 500,
              temperatures: tuple[float, ...] = TEMPERATURES, draws: int = 3) -> dict:
    """Choose the chat model's default decoding on validation data:
    1. the ranking weights by Hits@1 of 20 (a grid over the likelihood weight, the MI lambda and the overlap
       weight, the head's weight fixed at 1 when the model has one);
    2. the sampling temperature by the F1 of plain samples, averaged over `draws` seeded draws of every row,
       among the temperatures whose replies keep distinct-2 >= MIN_DISTINCT_2 (all rows, as eval counts it);
    3. the number of sampled candidates by the F1 of the chosen reply (sample-and-rank) with those weights
       at that temperature, averaged over `draws` seeded draws of the first `f1_examples` rows (a
       candidate count's gain is a few thousandths of F1, about what one draw's noise is), among the counts
       that keep distinct-2 >= MIN_DISTINCT_2.
    Returns {"decoding": the chosen entry, "grid": every Hits@1, "temperature": F1 and distinct-2 per
    temperature, "f1": F1 and distinct-2 per candidate count}."""
    dd = load_corpus(corpus)
    refuse_test(split)
    ds, examples, _ = chat_rows(ck, dd, split, max_examples, seed)
    model = ck.model
    k = min(RANK_CANDIDATES, len(examples))
    if k < 2:
        raise CorpusError(f"{corpus}:{split} has too few rows to rank")
    cands, truth = ranking_candidates(len(examples), k, random.Random(seed + 1))
    comp, prior = ranking_components(model, examples, cands, prior=True, overlap=R.Overlap.of(ck.tokenizer))
    truth_t = torch.tensor(truth)
    head = comp.head is not None
    grid = []
    for lik in ((0.0, 0.5, 1.0, 2.0, 4.0, 8.0) if head else (1.0,)):
        for mi in ((0.0, 0.25, 0.5, 0.75) if lik else (0.0,)):
            for overlap in OVERLAP_WEIGHTS:
                w = R.RankWeights(head=1.0 if head else 0.0, likelihood=lik, mi=mi, overlap=overlap)
                hits = float((R.combine(comp, w, prior).view(len(examples), k).argmax(1) == truth_t).float().mean())
                grid.append({**w.as_dict(), "hits_at_1": hits})
    best = max(grid, key=lambda g: g["hits_at_1"])  # the first of equals: the simpler score
    weights = R.RankWeights.from_dict(best)
    base = {**default_decoding(ck).__dict__, "strategy": "sample"}
    prompts, refs = [e.src for e in examples], list(ds["response"])

    def mean_scores(rows: list[list[int]], temperature: float, candidates: int) -> dict:
        gen = GenerationConfig.from_dict({**base, "temperature": temperature, "num_candidates": candidates})
        scores = [M.dialogue_scores(chat_replies(ck, rows, gen, weights, seed + d), refs[: len(rows)])
                  for d in range(draws)]
        return {key: sum(s[key] for s in scores) / draws for key in ("f1", "distinct_2")}

    temps = {t: mean_scores(prompts, t, 1) for t in temperatures}
    varied = [t for t in temperatures if temps[t]["distinct_2"] >= MIN_DISTINCT_2]
    t_best = (max(varied, key=lambda t: (round(temps[t]["f1"], 4), t)) if varied  # equal F1: the more varied
              else max(temperatures, key=lambda t: temps[t]["distinct_2"]))
    sub = prompts[:f1_examples]
    f1 = {n: mean_scores(sub, t_best, n) for n in candidate_counts}
    varied = [n for n in candidate_counts if f1[n]["distinct_2"] >= MIN_DISTINCT_2] or list(candidate_counts)
    n_best = max(varied, key=lambda n: (round(f1[n]["f1"], 4), -n))  # equal F1: fewer candidates
    return {"decoding": {"temperature": t_best, "num_candidates": n_best, "ranking": weights.as_dict()},
            "tuned_on": {"corpus": corpus, "split": split, "rows": len(examples), "f1_rows": len(sub),
                         "temperature_draws": draws, "seed": seed},
            "grid": grid, "temperature": {str(t): v for t, v in temps.items()},
            "f1": {str(n): v for n, v in f1.items()}}


