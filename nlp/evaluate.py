"""`python -m nlp eval`: a checkpoint's metrics on a corpus split, with baselines run in the same harness.

    python -m nlp eval --checkpoint checkpoints/lm --corpus wikitext2 --split test --json

Prints one JSON object {"task", "corpus", "split", "checkpoint", "metrics", "baselines", ...} and merges it
into CHECKPOINT/metrics.json under "CORPUS:SPLIT" (or writes it to --output).
  lm         token_perplexity, word_perplexity (exp of total NLL over words, end-of-line markers counted)
             baseline: add-one unigram over the training words
  sentiment  accuracy, macro_f1, confusion (binary, neutral ratings dropped), pearson of the rating head
             baselines: Naive Bayes bag of words (nltk, same train split), the VADER lexicon
  chat       f1 (ParlAI), bleu, distinct_1/2, token/word perplexity of the reference replies, context_gain
             (reply NLL after another row's context minus after its own, nats a token), hits_at_1 (the true
             reply among 20, ranked by the app's ranking score: nlp.ranking)
             baselines: TF-IDF retrieval (nearest training context -> its reply), the most frequent reply,
             TF-IDF ranking (the same 20 candidates by cosine with the context)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from nlp import data as D
from nlp import lexicon
from nlp import metrics as M
from nlp import ranking as R
from nlp.checkpoint import METRICS, Checkpoint, CheckpointError, read_metrics, write_json
from nlp.corpora import CorpusError, load_corpus, task_of, words_in
from nlp.decoding import GenerationConfig, beam_search, make_generator, sample_batch
from nlp.ranker import RANKER_CONFIG
from nlp.retrieval import MANIFEST, index_path
from nlp.serve import (
    NEUTRAL,
    VERDICTS,
    NeutralRule,
    candidate_scores,
    chat_reply,
    classify,
    default_decoding,
    length_cut,
    open_index,
    ranking_weights,
    sentence_cut,
)
from nlp.tokenizer import EOS


# --------------------------------------------------------------------------- language model
@torch.no_grad()
def lm_nll(model, stream: torch.Tensor, batch_size: int = 10, bptt: int = 70) -> float:
    """Total NLL of every token of `stream` given all before it (state carried across windows).

    The stream is cut into `batch_size` contiguous columns; the few tokens left over are scored in one
    more short pass, so every token counts exactly once.
    """
    stream = torch.cat([torch.tensor([EOS]), stream])  # the text starts as if after a line end
    n = (stream.numel() - 1) // batch_size
    total = 0.0
    parts = []
    if n >= 1:
        cols = stream[: n * batch_size + 1]
        x_all = cols[:-1].view(batch_size, n)
        y_all = cols[1:].view(batch_size, n)
        parts.append((x_all, y_all))
    rest = stream[n * batch_size:]
    if rest.numel() > 1:
        parts.append((rest[:-1].view(1, -1), rest[1:].view(1, -1)))
    device = next(model.parameters()).device
    for x_all, y_all in parts:
        state = None
        for i in range(0, x_all.shape[1], bptt):
            x, y = x_all[:, i:i + bptt].to(device), y_all[:, i:i + bptt].to(device)
            hidden, state = model(x, state)
            total += float(-model.log_probs(hidden).gather(-1, y.unsqueeze(-1)).sum())
    return total


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


def eval_lm(ck: Checkpoint, dd, split: str, max_examples: int) -> tuple[dict, dict]:
    ds = dd[split] if not max_examples else dd[split].select(range(min(max_examples, len(dd[split]))))
    stream = D.lm_stream(ds, ck.tokenizer)
    total = lm_nll(ck.model, stream)
    metrics = M.perplexities(total, stream.numel(), words_in(ds))
    return metrics, {"unigram_add_one": unigram_baseline(dd["train"]["text"], ds["text"])}


# --------------------------------------------------------------------------- sentiment
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


def eval_sentiment(ck: Checkpoint, dd, split: str, max_examples: int) -> tuple[dict, dict]:
    ds = dd[split] if not max_examples else dd[split].select(range(min(max_examples, len(dd[split]))))
    results = classify(ck, list(ds["text"]))
    keep = [i for i, y in enumerate(ds["label"]) if y >= 0]
    metrics = M.classification([results[i]["label"] for i in keep], [ds["label"][i] for i in keep])
    if results and "rating" in results[0]:
        metrics["pearson"] = M.pearson([r["rating"] for r in results], list(ds["rating"]))
    if results and "rating" in results[0] and "neutral" in ck.config:
        metrics["three_way"] = three_way(results, list(ds["rating"]))
    domains = sorted(set(ds["domain"]))
    if len(domains) > 1:
        metrics["by_domain"] = {}
        for d in domains:
            idx = [i for i in keep if ds["domain"][i] == d]
            m = M.classification([results[i]["label"] for i in idx], [ds["label"][i] for i in idx])
            metrics["by_domain"][d] = {k: m[k] for k in ("accuracy", "macro_f1", "n")}
    return metrics, sentiment_baselines(dd["train"], ds)


NEUTRAL_BAND = 0.5  # a mean human rating within 0.5 of 0 (VADER's -4..+4 scale) counts as neutral / mixed
PROBE = Path(__file__).resolve().parent.parent / "scripts" / "sentiment_probe.jsonl"


def refuse_test(split: str) -> None:
    """Tuning reads validation (or train) data only: the test split is read once, for the report."""
    if split == "test":
        raise CorpusError("tune on validation (or train) data: the test split is read once, for the report")


def three_way_truth(rating: float) -> int:
    """0 negative, 1 positive, 2 neutral / mixed (the VERDICTS order)."""
    return 2 if abs(rating) < NEUTRAL_BAND else int(rating > 0)


def three_way(results: list[dict], ratings: list[float]) -> dict:
    """The verdicts against the human ratings, neutral included: accuracy, macro-F1 of the three classes."""
    preds = [VERDICTS.index(r["verdict"]) for r in results]
    out = M.classification(preds, [three_way_truth(x) for x in ratings], num_classes=3)
    return {**out, "neutral_band": NEUTRAL_BAND, "classes": list(VERDICTS)}


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


def derangement(n: int, rng: random.Random) -> list[int]:
    """A seeded permutation with no fixed point: row i gets the context of row perm[i] != i."""
    if n < 2:
        return list(range(n))
    order = list(range(n))
    rng.shuffle(order)
    perm = [0] * n
    for k in range(n):  # each row takes the next row's in a random cycle
        perm[order[k]] = order[(k + 1) % n]
    return perm


@torch.no_grad()
def reply_nll(model, examples: list) -> tuple[float, int]:
    """Summed NLL of the reference replies (teacher forcing, EOS included) and their token count."""
    total = tokens = 0.0
    for batch in D.batches_of(examples, 64, None):
        loss, n = model.loss(batch["src"], batch["src_len"], batch["tgt_in"], batch["tgt_out"])
        total, tokens = total + float(loss), tokens + float(n)
    return total, int(tokens)


def context_text(turns: list[str]) -> str:
    return " ".join(turns)


def ranking_candidates(n: int, k: int, rng: random.Random) -> tuple[list[list[int]], list[int]]:
    """For each of n rows: k row indices (its own and k - 1 others, seeded, in random order) and where its
    own one stands."""
    cands, truth = [], []
    for i in range(n):
        others = rng.sample(range(n - 1), k - 1)
        idx = [j + (j >= i) for j in others] + [i]  # skip row i itself
        rng.shuffle(idx)
        cands.append(idx)
        truth.append(idx.index(i))
    return cands, truth


def chat_rows(ck: Checkpoint, dd, split: str, max_examples: int, seed: int):
    """The rows of a split that make an example (a non-empty context and reply), so NLL and word counts cover
    the same rows; with max_examples, a fixed, seeded sample of them. -> (rows, examples, contexts)."""
    train_cfg = ck.config.get("train", {})
    turns = train_cfg.get("context_turns", 3)
    src_len = train_cfg.get("max_src_len", 96)
    ds = dd[split].filter(lambda r: bool(r["response"].strip()) and any(t.strip() for t in r["context"][-turns:]))
    if max_examples and len(ds) > max_examples:
        ds = ds.shuffle(seed=seed).select(range(max_examples))
    examples = D.chat_examples(ds, ck.tokenizer, turns, src_len, 10_000)
    assert len(examples) == len(ds), "every kept row makes one example"
    return ds, examples, [c[-turns:] for c in ds["context"]]


def hits(scores: list[list[float]], truth: list[int]) -> float:
    """Share of rows whose true candidate scores strictly above every other (a tie is a miss)."""
    right = sum(all(s[t] > x for j, x in enumerate(s) if j != t) for s, t in zip(scores, truth))
    return right / max(len(truth), 1)


def ranking_scores(ck: Checkpoint, examples: list, candidates: list[list[list[int]]]) -> dict[str, list[list[float]]]:
    """Each row's candidates (token ids) scored by the app's score, by the model's part of it alone and by the
    word overlap alone."""
    src = [e.src for e in examples]
    model = candidate_scores(ck, src, candidates, overlap=False)
    ov = R.Overlap.of(ck.tokenizer)
    flat = [c for group in candidates for c in group]
    overlap = ov([s for s, group in zip(src, candidates) for _ in group], flat).tolist()
    if ck.ranker is not None:  # the app's score is the ranker's plus its weight of the overlap
        app = [m + ck.ranker.overlap_weight * o for m, o in zip(model, overlap)]
    else:
        app = candidate_scores(ck, src, candidates)
    split = lambda xs: [xs[sum(map(len, candidates[:i])):][:len(g)] for i, g in enumerate(candidates)]  # noqa: E731
    return {"app": split(app), "model": split(model), "overlap": split(overlap)}


@torch.no_grad()
def eval_chat(ck: Checkpoint, dd, split: str, max_examples: int, gen: GenerationConfig,
              seed: int = 0) -> tuple[dict, dict]:
    ds, examples, contexts = chat_rows(ck, dd, split, max_examples, seed)
    model = ck.model
    # perplexity of the reference replies (teacher forcing), per token and per word
    total, tokens = reply_nll(model, examples)
    n_words = D.word_count(ds["response"])  # + 1 a reply: its end, as for the LM
    metrics = M.perplexities(total, tokens, n_words)
    # how much the context matters: the same replies after a random other row's context (a seeded derangement)
    perm = derangement(len(examples), random.Random(seed))
    swapped, _ = reply_nll(model, [D.ChatExample(examples[j].src, e.tgt) for j, e in zip(perm, examples)])
    metrics["nll_true_context"] = total / max(tokens, 1)
    metrics["nll_other_context"] = swapped / max(tokens, 1)
    metrics["context_gain"] = metrics["nll_other_context"] - metrics["nll_true_context"]
    refs = list(ds["response"])
    tfidf = Tfidf(dd["train"])
    baselines = chat_baselines(tfidf, dd["train"], contexts, refs)
    # rows whose whole context (its last `turns` turns) occurs verbatim in the training split: splits are by
    # conversation, yet short openings ("hi!") repeat across conversations
    turns = ck.config.get("train", {}).get("context_turns", 3)
    seen = {tuple(c[-turns:]) for c in dd["train"]["context"]}
    metrics["contexts_in_train"] = sum(tuple(c) in seen for c in contexts) / max(len(contexts), 1)
    # Hits@1: the true reply among RANK_CANDIDATES - 1 others, (a) replies of random other rows, (b) hard ones:
    # the replies of the training contexts nearest to the row's last turn
    k = min(RANK_CANDIDATES, len(examples))
    if k > 1:
        rows, truth = ranking_candidates(len(examples), k, random.Random(seed + 1))
        easy = ranking_scores(ck, examples, [[examples[j].tgt for j in idx] for idx in rows])
        tf_easy = tfidf.cosine([context_text(c) for c in contexts], [[refs[j] for j in idx] for idx in rows])
        hard_texts = [[ref] + d for ref, d in zip(refs, hard_distractors(tfidf, contexts, refs, RANK_CANDIDATES - 1))]
        hard = ranking_scores(ck, examples, [ck.tokenizer.encode_batch(t) for t in hard_texts])
        tf_hard = tfidf.cosine([context_text(c) for c in contexts], hard_texts)
        zeros = [0] * len(examples)
        metrics.update(hits_at_1=hits(easy["app"], truth), hits_at_1_model=hits(easy["model"], truth),
                       hits_at_1_hard=hits(hard["app"], zeros), hits_at_1_candidates=k, hits_at_1_chance=1 / k)
        baselines["overlap_ranking"] = {"hits_at_1": hits(easy["overlap"], truth),
                                        "hits_at_1_hard": hits(hard["overlap"], zeros)}
        baselines["tfidf_ranking"] = {"hits_at_1": hits(tf_easy, truth), "hits_at_1_hard": hits(tf_hard, zeros)}
    # replies as the app gives them (with the reply index when the checkpoint has one)
    index = open_index(ck)
    shown = app_replies(ck, contexts, gen, seed, index)
    reply_ids = [r["ids"] for r in shown]
    replies = [r["text"] for r in shown]
    metrics.update(M.dialogue_scores(replies, refs))
    metrics["retrieved_share"] = sum(r["source"] == "retrieved" for r in shown) / max(len(shown), 1)
    metrics["plain_share"] = sum(r["source"] == "plain" for r in shown) / max(len(shown), 1)
    if limit := length_cut(ck, gen.max_new_tokens):
        # generated replies that ran into a length limit and stop mid-sentence (what cut_unfinished cuts)
        written = [i for i, r in zip(reply_ids, shown) if r["source"] == "generated"]
        metrics["unfinished_replies"] = sum(map(limit.unfinished, written)) / max(len(reply_ids), 1)
    metrics["samples"] = [{"context": c, "reply": r["text"], "source": r["source"], "reference": ref}
                          for c, r, ref in list(zip(contexts, shown, refs))[:5]]
    return metrics, baselines


RANK_CANDIDATES = 20


def app_replies(ck: Checkpoint, contexts: list[list[str]], gen: GenerationConfig, seed: int,
                index=None) -> list[dict]:
    """The reply the app shows to each context under a decoding, seeded: {"text", "ids", "source"}. With
    several sampled candidates and the checkpoint's ranker, each context goes through the app's own path
    (nlp.serve.chat_reply, its default source, with `index` when given); otherwise the batched
    `chat_reply_ids`."""
    if gen.strategy == "sample" and gen.num_candidates > 1 and ck.ranker is not None:
        out = []
        for c in contexts:
            reply = chat_reply(ck, c, gen, make_generator(seed), index=index)
            "".join(reply.stream)
            out.append({"text": reply.text, "ids": ck.tokenizer.encode(reply.text), "source": reply.source})
        return out
    prompts = [ck.tokenizer.encode_turns(c, ck.config.get("train", {}).get("max_src_len", 96)) for c in contexts]
    return [{"text": ck.tokenizer.decode(r), "ids": r, "source": "generated"}
            for r in chat_reply_ids(ck, prompts, gen, ranking_weights(ck), seed)]


def chat_replies(ck: Checkpoint, prompts: list[list[int]], gen: GenerationConfig, weights: R.RankWeights,
                 seed: int) -> list[str]:
    """The generated reply to each encoded context under a decoding (beam search, sample-and-rank by the older
    score or plain sampling), seeded: what tune-chat compares."""
    return [ck.tokenizer.decode(r) for r in chat_reply_ids(ck, prompts, gen, weights, seed)]


def chat_reply_ids(ck: Checkpoint, prompts: list[list[int]], gen: GenerationConfig, weights: R.RankWeights,
                   seed: int) -> list[list[int]]:
    """`chat_replies` as token ids."""
    model = ck.model
    cut = sentence_cut(ck, gen)  # as the app does for these two decodings
    if gen.strategy == "beam":  # one context at a time: beam search keeps its own batch of hypotheses
        ids = [beam_search(model, p, gen)[0][0] for p in prompts]
        ids = [cut(r) for r in ids] if cut else ids
    elif gen.num_candidates > 1:
        ids = [c[0]["ids"] for c in R.sample_and_rank(model, prompts, gen, weights, make_generator(seed), cut,
                                                      R.Overlap.of(ck.tokenizer))]
    else:
        g = make_generator(seed)
        ids = [r for start in range(0, len(prompts), 64) for r in sample_batch(model, prompts[start:start + 64],
                                                                               gen, g)]
    return ids


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


def evaluate(ck: Checkpoint, corpus: str, split: str = "test", max_examples: int = 0,
             gen: GenerationConfig | None = None, seed: int = 0) -> dict:
    dd = load_corpus(corpus)
    if task_of(dd) != ck.task:
        raise CorpusError(f"{corpus} is a {task_of(dd)} corpus; the checkpoint is a {ck.task} model")
    if split not in dd:
        raise CorpusError(f"{corpus} has no split {split!r} (it has {list(dd)})")
    from nlp.tasks import TASKS

    task = TASKS[ck.task]
    gen = (gen or default_decoding(ck)) if task.decodes else None
    metrics, baselines = task.evaluate(ck, dd, split, max_examples, gen, seed)
    result = {"task": ck.task, "corpus": corpus, "split": split, "checkpoint": str(ck.path),
              "weights": measured_files(ck), "metrics": metrics, "baselines": baselines,
              "max_examples": max_examples or None}
    if task.decodes:
        result["decoding"] = {**gen.__dict__, "seed": seed}
    return result


def measured_files(ck: Checkpoint) -> dict:
    """The sha256 of what a result measured: the weights, and for a chat model its ranker and reply index."""
    out = {"model.safetensors": ck.config.get("files", {}).get("model.safetensors")}
    for name, path in (("ranker", ck.path / RANKER_CONFIG), ("index", index_path(ck.path) / MANIFEST)):
        if ck.task == "chat" and path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def record(result: dict, checkpoint: Path, output: Path | None = None, tag: str = "") -> Path:
    """Write the result: merged into CHECKPOINT/metrics.json under "corpus:split" (+ ":tag", so results of
    several decodings can sit side by side), or to its own file."""
    if output is not None:
        write_json(output, result)
        return output
    target = checkpoint / METRICS
    existing = read_metrics(checkpoint, []) or {}  # damaged entries are dropped, not kept beside the new one
    existing[":".join([result["corpus"], result["split"]] + ([tag] if tag else []))] = result
    write_json(target, existing)
    return target
