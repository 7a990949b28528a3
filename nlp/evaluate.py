"""`python -m nlp eval`: a checkpoint's metrics on a corpus split, with baselines run in the same harness.

    python -m nlp eval --checkpoint checkpoints/lm --corpus wikitext2 --split test --json

Prints one JSON object {"task", "corpus", "split", "checkpoint", "metrics", "baselines", ...} and merges it
into CHECKPOINT/metrics.json under "CORPUS:SPLIT" (or writes it to --output).
  lm         token_perplexity, word_perplexity (exp of total NLL over words, end-of-line markers counted)
             baseline: add-one unigram over the training words
  sentiment  accuracy, macro_f1, confusion (binary, neutral ratings dropped), pearson of the rating head
             baselines: Naive Bayes bag of words (nltk, same train split), the VADER lexicon
  chat       f1 (ParlAI), bleu, distinct_1/2, token/word perplexity of the reference replies, context_gain
             (reply NLL after another row's context minus after its own, nats a token; the other row is a
             seeded derangement of the evaluated rows: training's val_context_gain takes the previous row of
             each validation batch instead, so the two differ a little), hits_at_1 (the true
             reply among 20, ranked by the app's ranking score: nlp.ranking)
             baselines: TF-IDF retrieval (nearest training context -> its reply), the most frequent reply,
             TF-IDF ranking (the same 20 candidates by cosine with the context)
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from nlp import data as D
from nlp import metrics as M
from nlp import ranking as R
from nlp.baselines import Tfidf, chat_baselines, hard_distractors, sentiment_baselines, unigram_baseline
from nlp.beam import beam_search
from nlp.checkpoint import METRICS, Checkpoint, read_metrics, write_json
from nlp.corpora import CorpusError, load_corpus, task_of, words_in
from nlp.decoding import GenerationConfig, make_generator, sample_batch
from nlp.ranker import BATCH_OUTPUT_ROWS, RANKER_CONFIG
from nlp.retrieval import MANIFEST, index_path
from nlp.serve import (
    candidate_scores,
    chat_reply,
    classify,
    default_decoding,
    length_cut,
    open_index,
    ranking_weights,
    sentence_cut,
)
from nlp.tasks import TASKS
from nlp.tokenizer import EOS
from nlp.verdict import VERDICTS


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


def eval_lm(ck: Checkpoint, dd, split: str, max_examples: int) -> tuple[dict, dict]:
    ds = dd[split] if not max_examples else dd[split].select(range(min(max_examples, len(dd[split]))))
    stream = D.lm_stream(ds, ck.tokenizer)
    total = lm_nll(ck.model, stream)
    metrics = M.perplexities(total, stream.numel(), words_in(ds))
    return metrics, {"unigram_add_one": unigram_baseline(dd["train"]["text"], ds["text"])}


# --------------------------------------------------------------------------- sentiment
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


def three_way_truth(rating: float) -> int:
    """0 negative, 1 positive, 2 neutral / mixed (the VERDICTS order)."""
    return 2 if abs(rating) < NEUTRAL_BAND else int(rating > 0)


def three_way(results: list[dict], ratings: list[float]) -> dict:
    """The verdicts against the human ratings, neutral included: accuracy, macro-F1 of the three classes."""
    preds = [VERDICTS.index(r["verdict"]) for r in results]
    out = M.classification(preds, [three_way_truth(x) for x in ratings], num_classes=3)
    return {**out, "neutral_band": NEUTRAL_BAND, "classes": list(VERDICTS)}


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
    model = candidate_scores(ck, src, candidates, overlap=False, output_rows=BATCH_OUTPUT_ROWS)
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


def evaluate(ck: Checkpoint, corpus: str, split: str = "test", max_examples: int = 0,
             gen: GenerationConfig | None = None, seed: int = 0) -> dict:
    dd = load_corpus(corpus)
    if task_of(dd) != ck.task:
        raise CorpusError(f"{corpus} is a {task_of(dd)} corpus; the checkpoint is a {ck.task} model")
    if split not in dd:
        raise CorpusError(f"{corpus} has no split {split!r} (it has {list(dd)})")
    task = TASKS[ck.task]
    gen = (gen or default_decoding(ck)) if task.decodes else None
    if ck.task == "lm":
        metrics, baselines = eval_lm(ck, dd, split, max_examples)
    elif ck.task == "chat":
        metrics, baselines = eval_chat(ck, dd, split, max_examples, gen, seed)
    else:
        metrics, baselines = eval_sentiment(ck, dd, split, max_examples)
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
