"""`python -m nlp eval`: a checkpoint's metrics on a corpus split, with baselines run in the same harness.

    python -m nlp eval --checkpoint checkpoints/lm --corpus wikitext2 --split test --json

Prints one JSON object {"task", "corpus", "split", "checkpoint", "metrics", "baselines", ...} and merges it
into CHECKPOINT/metrics.json under "CORPUS:SPLIT" (or writes it to --output).
  lm         token_perplexity, word_perplexity (exp of total NLL over words, end-of-line markers counted)
             baseline: add-one unigram over the training words
  sentiment  accuracy, macro_f1, confusion (binary, neutral ratings dropped), pearson of the rating head
             baselines: Naive Bayes bag of words (nltk, same train split), the VADER lexicon
  chat       f1 (ParlAI), bleu, distinct_1/2, token/word perplexity of the reference replies
             baselines: TF-IDF retrieval (nearest training context -> its reply), the most frequent reply
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch

from nlp import data as D
from nlp import metrics as M
from nlp.checkpoint import METRICS, Checkpoint, write_json
from nlp.corpora import load_corpus, task_of, words_in
from nlp.decoding import GenerationConfig, beam_search, make_generator, sample_batch
from nlp.serve import classify
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


def eval_lm(ck: Checkpoint, dd, split: str, max_examples: int, **_) -> tuple[dict, dict]:
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
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        out["vader_lexicon"] = {"skipped": "pip install vaderSentiment==3.3.2"}
        return out
    sia = SentimentIntensityAnalyzer()
    compound = [sia.polarity_scores(t)["compound"] for t in texts]
    out["vader_lexicon"] = {k: v for k, v in M.classification([int(c >= 0) for c in compound], labels).items()
                            if k != "confusion"}
    return out


def eval_sentiment(ck: Checkpoint, dd, split: str, max_examples: int, **_) -> tuple[dict, dict]:
    ds = dd[split] if not max_examples else dd[split].select(range(min(max_examples, len(dd[split]))))
    results = classify(ck, list(ds["text"]))
    keep = [i for i, y in enumerate(ds["label"]) if y >= 0]
    metrics = M.classification([results[i]["label"] for i in keep], [ds["label"][i] for i in keep])
    if results and "rating" in results[0]:
        metrics["pearson"] = M.pearson([r["rating"] for r in results], list(ds["rating"]))
    domains = sorted(set(ds["domain"]))
    if len(domains) > 1:
        metrics["by_domain"] = {}
        for d in domains:
            idx = [i for i in keep if ds["domain"][i] == d]
            m = M.classification([results[i]["label"] for i in idx], [ds["label"][i] for i in idx])
            metrics["by_domain"][d] = {k: m[k] for k in ("accuracy", "macro_f1", "n")}
    return metrics, sentiment_baselines(dd["train"], ds)


# --------------------------------------------------------------------------- chat
def chat_baselines(train, contexts: list[list[str]], refs: list[str]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    train_ctx = [c[-1] if c else "" for c in train["context"]]
    train_resp = list(train["response"])
    vec = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    X = vec.fit_transform(train_ctx)
    Q = vec.transform([c[-1] if c else "" for c in contexts])
    best = []
    for start in range(0, Q.shape[0], 256):  # (q, n) similarity in slices keeps memory flat
        sims = (Q[start:start + 256] @ X.T).toarray()
        best += sims.argmax(1).tolist()
    retrieved = [train_resp[i] for i in best]
    common = Counter(M.normalize_answer(r) for r in train_resp).most_common(1)[0][0]
    frequent = next(r for r in train_resp if M.normalize_answer(r) == common)
    return {"tfidf_retrieval": M.dialogue_scores(retrieved, refs),
            "most_frequent_reply": {"reply": frequent, **M.dialogue_scores([frequent] * len(refs), refs)}}


@torch.no_grad()
def eval_chat(ck: Checkpoint, dd, split: str, max_examples: int, gen: GenerationConfig, seed: int = 0,
              context_turns: int | None = None, max_src_len: int | None = None, **_) -> tuple[dict, dict]:
    train_cfg = ck.config.get("train", {})
    turns = context_turns or train_cfg.get("context_turns", 3)
    src_len = max_src_len or train_cfg.get("max_src_len", 96)
    # rows that make an example (a non-empty context and reply), so NLL and word counts cover the same rows
    ds = dd[split].filter(lambda r: bool(r["response"].strip()) and any(t.strip() for t in r["context"][-turns:]))
    if max_examples and len(ds) > max_examples:  # a fixed, seeded sample of whole rows
        ds = ds.shuffle(seed=seed).select(range(max_examples))
    examples = D.chat_examples(ds, ck.tokenizer, turns, src_len, 10_000)
    assert len(examples) == len(ds), "every kept row makes one example"
    # perplexity of the reference replies (teacher forcing), per token and per word
    total = tokens = 0.0
    for batch in D.batches_of(examples, 64, None):
        loss, n = ck.model.loss(batch["src"], batch["src_len"], batch["tgt_in"], batch["tgt_out"])
        total, tokens = total + float(loss), tokens + float(n)
    n_words = sum(len(r.split()) + 1 for r in ds["response"])  # + 1: the end of the reply, as for the LM
    metrics = M.perplexities(total, int(tokens), n_words)
    contexts = [c[-turns:] for c in ds["context"]]
    prompts = [ck.tokenizer.encode_turns(c, src_len) or [EOS] for c in contexts]
    if gen.strategy == "beam":  # one context at a time: beam search keeps its own batch of hypotheses
        ids = [beam_search(ck.model, p, gen)[0][0] for p in prompts]
    else:
        g = make_generator(seed)
        ids = [r for start in range(0, len(prompts), 64) for r in sample_batch(ck.model, prompts[start:start + 64],
                                                                               gen, g)]
    replies = [ck.tokenizer.decode(r) for r in ids]
    refs = list(ds["response"])
    metrics.update(M.dialogue_scores(replies, refs))
    metrics["samples"] = [{"context": c, "reply": r, "reference": ref}
                          for c, r, ref in list(zip(contexts, replies, refs))[:5]]
    return metrics, chat_baselines(dd["train"], contexts, refs)


EVALUATORS = {"lm": eval_lm, "sentiment": eval_sentiment, "chat": eval_chat}


def evaluate(ck: Checkpoint, corpus: str, split: str = "test", max_examples: int = 0,
             gen: GenerationConfig | None = None, seed: int = 0) -> dict:
    dd = load_corpus(corpus)
    if task_of(dd) != ck.task:
        raise ValueError(f"{corpus} is a {task_of(dd)} corpus; the checkpoint is a {ck.task} model")
    if split not in dd:
        raise ValueError(f"{corpus} has no split {split!r} (it has {list(dd)})")
    gen = gen or GenerationConfig(strategy="sample", temperature=0.8, top_p=0.9, max_new_tokens=40)
    metrics, baselines = EVALUATORS[ck.task](ck, dd, split, max_examples, gen=gen, seed=seed)
    result = {"task": ck.task, "corpus": corpus, "split": split, "checkpoint": str(ck.path),
              "metrics": metrics, "baselines": baselines, "max_examples": max_examples or None}
    if ck.task == "chat":
        result["decoding"] = {**gen.__dict__, "seed": seed}
    return result


def record(result: dict, checkpoint: Path, output: Path | None = None, tag: str = "") -> Path:
    """Write the result: merged into CHECKPOINT/metrics.json under "corpus:split" (+ ":tag", so results of
    several decodings can sit side by side), or to its own file."""
    if output is not None:
        write_json(output, result)
        return output
    target = checkpoint / METRICS
    existing = {}
    if target.exists():
        try:
            existing = json.loads(target.read_text())
        except ValueError:
            existing = {}
    existing[":".join([result["corpus"], result["split"]] + ([tag] if tag else []))] = result
    write_json(target, existing)
    return target
