"""What a front end asks of the models, in plain Python values: the CLI and the web app both call this.

    reply = chat_reply(ck, ["hi!", "hello, how are you?", "fine, you?"], cfg, generator)
    for piece in reply.stream: ...          # text pieces as they are decoded
    reply.attention                         # then: (reply tokens x context tokens) weights, as lists

No tensors leave this module, so a page only formats strings and numbers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nlp.beam import beam_search
from nlp.checkpoint import CONFIG, Checkpoint, CheckpointError, load_checkpoint, rebuild_hint
from nlp.cpu_serving import half_step_weights, transposed_weights
from nlp.data import pad
from nlp.decoding import (
    GenerationConfig,
    GenerationError,
    is_whole,
    sample_tokens,
)
from nlp.lexicon import has_opinion
from nlp.ranker import features, load_ranker
from nlp.ranking import (
    Overlap,
    RankWeights,
    SentenceCut,
    combine,
    components,
    context_similarity,
    needs_prior,
    prior_loglik,
    sample_and_rank,
)
from nlp.retrieval import ReplyIndex, index_path
from nlp.runtime import cpu_has_native_bf16
from nlp.tokenizer import BOS, EOS, decode_text, detokenize_wikitext, stream_text
from nlp.verdict import NeutralRule

MAX_INPUT_CHARS = 20_000  # CLI limit; the web app sets tighter ones of its own


def check_text(text: str, what: str = "input", limit: int = MAX_INPUT_CHARS) -> str:
    """Refuse text that is binary or too long, with a message that says so (never cut silently)."""
    if "\x00" in text:
        raise GenerationError(f"the {what} contains NUL bytes: is it a binary file?")
    if len(text) > limit:
        raise GenerationError(f"the {what} has {len(text):,} characters; the limit is {limit:,}")
    return text


def strip_control(text: str) -> tuple[str, int]:
    """Remove control characters other than newline and tab; returns the text and how many were removed."""
    kept = "".join(ch for ch in text if ch in "\n\t" or (ord(ch) >= 32 and not 0x7F <= ord(ch) < 0xA0))
    return kept, len(text) - len(kept)


@dataclass
class Reply:
    """A chat reply in progress: iterate `stream`; the other fields are complete once it is exhausted."""
    stream: Iterator[str] = iter(())
    turns_used: int = 0               # how many of the newest turns the model saw
    turns_dropped: int = 0            # older turns left out (the model takes only its trained context)
    tokens_dropped: int = 0           # context tokens cut from the oldest end to fit max_src_len
    context_tokens: list[str] = field(default_factory=list)
    reply_tokens: list[str] = field(default_factory=list)
    attention: list[list[float]] = field(default_factory=list)  # one row per reply token
    text: str = ""
    candidates: list[dict] = field(default_factory=list)  # {"text", "score", "source", "corpus", ...}, best first
    source: str = "generated"         # "generated": written by the model; "retrieved": a training reply
    corpus: str = ""                  # for a retrieved reply, the corpus it comes from


SOURCES = ("retrieved", "both", "generated")
DEFAULT_SOURCE = "retrieved"
RETRIEVED_CANDIDATES = 20  # training replies the index offers the ranker for each message
# When nothing fits: the ranked-first retrieved reply is shown only when the training context turn it answered
# means what the message says, by the encoder's cosine (nlp.ranking.context_similarity) of at least
# MIN_SIMILARITY; below it, a plain reply (PLAIN_REPLIES). Chosen on round 1's blind labels (docs/chat.md): the
# similarity told sensible retrieved replies from the rest with AUC 0.80, the BM25 match 0.66 and the ranker's
# score 0.69. An index built before it stored the context turns gates on the BM25 match (MIN_MATCH) instead.
MIN_SIMILARITY = 0.75
MIN_MATCH = 5.5
PLAIN_REPLIES = {"question": "I don't know.", "statement": "Ok."}


def fits(candidate: dict, min_match: float = MIN_MATCH, min_similarity: float = MIN_SIMILARITY) -> bool:
    """Whether a ranked-first retrieved reply is shown: its context turn's similarity in meaning to the message
    is at least min_similarity, or, from an index without context turns, its BM25 match at least min_match."""
    if "similarity" in candidate:
        return candidate["similarity"] >= min_similarity
    return candidate.get("match", 0.0) >= min_match


def plain_reply(message: str) -> str:
    """What the chat says when no candidate fits: it does not pretend to know or to have understood."""
    return PLAIN_REPLIES["question" if "?" in message else "statement"]


def chat_reply(ck: Checkpoint, history: list[str], cfg: GenerationConfig,
               generator: torch.Generator | None = None, source: str = DEFAULT_SOURCE,
               index: ReplyIndex | None = None, min_match: float = MIN_MATCH,
               min_similarity: float = MIN_SIMILARITY) -> Reply:
    """Reply to the last turn of `history` (oldest first), seeing as many turns as the model was trained on.

    With sampling and several candidates (the default), the candidates come from `source`: "retrieved" (the
    replies `index` holds for the training contexts most like the message), "generated" (the decoder's
    samples) or "both"; one score ranks them (the checkpoint's ranker, nlp.ranker, or without one the older
    nlp.ranking score) and the best is shown, its source said. With "retrieved", a best reply that does not
    `fit` (or none at all) gives way to a plain reply (source "plain").
    Without an index every source falls back to the generated candidates. Beam search and plain sampling
    write one reply, streamed."""
    if not history or not history[-1].strip():
        raise GenerationError("say something first: the message is empty")
    if source not in SOURCES:
        raise GenerationError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    cfg = with_bans(ck, cfg)
    train = ck.config.get("train", {})
    keep_turns, max_src = train.get("context_turns", 3), train.get("max_src_len", 96)
    used = history[-keep_turns:]
    per_turn = ck.tokenizer.encode_batch(used)
    full_len = sum(map(len, per_turn)) + len(used) - 1
    ids = ck.tokenizer.encode_turns(used, max_src)
    reply = Reply(turns_used=len(used), turns_dropped=len(history) - len(used),
                  tokens_dropped=max(0, full_len - len(ids)), context_tokens=ck.tokenizer.pieces(ids))
    trace: list = []

    def run() -> Iterator[str]:
        if cfg.strategy == "beam":  # the n-best come at once; attention is recorded for step-wise decoding
            best = beam_search(ck.model, ids, cfg)[0][0]
            best = cut(best) if (cut := sentence_cut(ck, cfg)) else best
            reply.text = decode_text(ck.tokenizer, best)
            reply.reply_tokens = ck.tokenizer.pieces(best)
            yield reply.text
            return
        if cfg.strategy == "sample" and cfg.num_candidates > 1:  # rank candidates: the best comes at once
            cands = gather_candidates(ck, ids, history[-1], cfg, generator, source, index)
            gated = source == "retrieved" and index is not None
            if gated and not any(fits(c, min_match, min_similarity) for c in cands):
                # the ranked-first cannot fit when none does: the plain reply, shown before the ranking
                best = None
            else:
                reply.candidates = rank_candidates(ck, ids, cands)
                best = reply.candidates[0]
                if gated and not fits(best, min_match, min_similarity):
                    best = None
            if best is None:
                text = plain_reply(history[-1])
                best = {"text": text, "ids": ck.tokenizer.encode(text), "source": "plain"}
            reply.text, reply.source, reply.corpus = best["text"], best["source"], best.get("corpus", "")
            reply.reply_tokens = ck.tokenizer.pieces(best["ids"])
            yield reply.text
            # after the text, which need not wait for them (the stream ends once they are in): the candidates'
            # scores when the text did not need them, and the attention map
            if not reply.candidates:
                reply.candidates = rank_candidates(ck, ids, cands)
            reply.attention = [[round(float(w), 4) for w in row]
                               for row in reply_attention(ck.model, ids, best["ids"])]
            return
        out_ids: list[int] = []

        def tokens() -> Iterator[int]:
            for t in sample_tokens(ck.model, ids, cfg, generator, trace):
                out_ids.append(t)
                yield t
        for piece in stream_text(ck.tokenizer, tokens()):
            reply.text += piece
            yield piece
        reply.reply_tokens = ck.tokenizer.pieces(out_ids)
        reply.attention = [[round(float(w), 4) for w in row] for row in trace]

    reply.stream = run()
    return reply


def gather_candidates(ck: Checkpoint, ids: list[int], message: str, cfg: GenerationConfig,
                      generator: torch.Generator | None, source: str, index: ReplyIndex | None) -> list[dict]:
    """The candidates of one reply, not yet scored: {"text", "ids", "source", "corpus"?, "match"?,
    "similarity"?}. Generated ones are sampled and cut as sample-and-rank does; retrieved ones are the index's
    hits for the message, each with the BM25 match and (with an index that stores them) the similarity in
    meaning of the context turn it answered to the message (nlp.ranking.context_similarity)."""
    cands: list[dict] = []
    if index is not None and source != "generated":
        hits = index.search(message, RETRIEVED_CANDIDATES)
        cands += [{"text": hit.text, "ids": ck.tokenizer.encode(hit.text), "source": "retrieved",
                   "corpus": hit.corpus, "match": round(hit.score, 3)} for hit in hits]
        contexts = [index.context(hit.entry) for hit in hits]
        if hits and None not in contexts:  # an index of format 1 stores no context turns
            for c, sim in zip(cands, context_similarity(ck.model, ck.tokenizer, message, contexts)):
                c["similarity"] = round(sim, 4)
    if source != "retrieved" or not cands:
        ranked = sample_and_rank(ck.model, [ids], cfg, ranking_weights(ck), generator, sentence_cut(ck, cfg),
                                 Overlap.of(ck.tokenizer))[0]
        cands += [{"text": decode_text(ck.tokenizer, c["ids"]), "ids": c["ids"], "source": "generated",
                   **{k: v for k, v in c.items() if k != "ids"}} for c in ranked]
    return cands


def rank_candidates(ck: Checkpoint, ids: list[int], cands: list[dict]) -> list[dict]:
    """`gather_candidates`' output best first, each with its "score": with the checkpoint's ranker all are
    scored by it; without one, the generated ones keep the older score sample-and-rank gave them (that score
    was never tuned to compare human replies)."""
    if ck.ranker is None:
        generated = [c for c in cands if c["source"] == "generated"]
        return generated or cands
    kept = ("text", "ids", "source", "corpus", "match", "similarity")  # the older score's parts no longer say why
    scores = candidate_scores(ck, [ids], [[c["ids"] for c in cands]])
    cands = [{**{k: c[k] for k in kept if k in c}, "score": round(s, 4)} for c, s in zip(cands, scores)]
    return sorted(cands, key=lambda c: -c["score"])


@torch.no_grad()
def candidate_scores(ck: Checkpoint, contexts: list[list[int]], candidates: list[list[list[int]]],
                     overlap: bool = True, batch: int = 24, output_rows: int = 128) -> list[float]:
    """The app's score of every candidate reply (ids) of every context, flat and in order: the checkpoint's
    ranker plus its weight of the word overlap, or without a ranker the older nlp.ranking score with the
    checkpoint's tuned weights. overlap=False leaves the overlap term out: the model's part alone.
    output_rows: positions the ranker's features run through the output layer at once (nlp.ranker.features;
    a server keeps it small, a batch evaluation raises it)."""
    ov = Overlap.of(ck.tokenizer)
    flat_ctx = [c for c, group in zip(contexts, candidates) for _ in group]
    flat = [r for group in candidates for r in group]
    if ck.ranker is None:
        weights = ranking_weights(ck)
        if not overlap:
            weights = dataclasses.replace(weights, overlap=0.0)
        comp = components(ck.model, contexts, candidates)
        comp.overlap = ov(flat_ctx, flat) if weights.overlap else None
        prior = prior_loglik(ck.model, flat) if needs_prior(weights) else None
        return combine(comp, weights, prior).tolist()
    scores = torch.cat([ck.ranker(features(ck.model, ck.tokenizer, contexts[i:i + batch], candidates[i:i + batch],
                                           output_rows=output_rows))
                        for i in range(0, len(contexts), batch)])
    if overlap and ck.ranker.overlap_weight:
        scores = scores + ck.ranker.overlap_weight * ov(flat_ctx, flat)
    return scores.tolist()


def open_index(ck: Checkpoint) -> ReplyIndex | None:
    """A chat checkpoint's reply index (its `index/` folder), None when it has none; a damaged one is a
    ReplyIndexError that says how to rebuild it."""
    path = index_path(ck.path)
    if not path.exists():
        return None
    return ReplyIndex.load(path)


def open_checkpoint(path: str | Path, task: str | None = None, impl: str | None = None,
                    half_steps: bool = True, ranker: bool = True) -> Checkpoint:
    """A checkpoint ready to serve: `load_checkpoint`, then the task and the config.json entries that serving
    reads (context length, default decoding, ranking weights, neutral rule) checked, so that a damaged entry
    is a CheckpointError here, not a traceback in the middle of a reply. On a CPU that multiplies bfloat16
    natively, a language model's token-by-token steps use bfloat16 copies of its weights (`half_steps=False`:
    float32 throughout; bench/decode_speed.py measures both). A chat checkpoint's ranker is loaded too, unless
    `ranker=False` (what retraining it needs: an outdated ranker is no reason to stop)."""
    ck = load_checkpoint(path, impl=impl, task=task)
    where = ck.path / CONFIG
    for key in ("train", "data", "decoding", "neutral"):
        if not isinstance(ck.config.get(key, {}), dict):
            raise CheckpointError(f"{where}: its {key!r} entry must be a JSON object, not "
                                  f"{type(ck.config[key]).__name__}: {rebuild_hint(ck.path)}")
    for key in ("context_turns", "max_src_len"):
        value = ck.config.get("train", {}).get(key, 1)
        if not is_whole(value) or value < 1:
            raise CheckpointError(f"{where}: train.{key} must be a whole number >= 1, got {value!r}")
    try:
        default_decoding(ck)
        ranking_weights(ck)
        NeutralRule.of(ck)
    except (GenerationError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: a damaged \"decoding\" or \"neutral\" entry ({e}); delete that entry "
                              "to use the defaults") from None
    transposed_weights(ck.model)  # inference only: faster batch-1 steps, the same weights
    if ck.task == "chat":  # what the first reply would compute: the pieces that end a sentence, the overlap's weights
        _ = ck.tokenizer.sentence_ends
        Overlap.of(ck.tokenizer)
        ck.ranker = load_ranker(ck) if ranker else None
    if ck.task == "lm" and half_steps and next(ck.model.parameters()).device.type == "cpu" and cpu_has_native_bf16():
        half_step_weights(ck.model)
    return ck


def length_cut(ck: Checkpoint, max_new_tokens: int) -> SentenceCut | None:
    """For a chat model: the cut of its replies that run into a length limit back to their last full sentence
    (SentenceCut says why). The limit is the reply length it was trained on (train.max_tgt_len, EOS
    included), where it learned to stop near that length mid-sentence, or the decoding's `max_new_tokens` when
    that comes first, where the sampler stops it."""
    if ck.task != "chat":
        return None
    trained = ck.config.get("train", {}).get("max_tgt_len")
    if is_whole(trained) and 2 <= trained <= max_new_tokens + 1:
        return SentenceCut(trained - 1, ck.tokenizer.sentence_ends)
    return SentenceCut(max_new_tokens, ck.tokenizer.sentence_ends, margin=0)


def sentence_cut(ck: Checkpoint, cfg: GenerationConfig) -> SentenceCut | None:
    """`length_cut` under this decoding, unless it says to keep unfinished replies (cfg.cut_unfinished)."""
    return length_cut(ck, cfg.max_new_tokens) if cfg.cut_unfinished else None


def ranking_weights(ck: Checkpoint) -> RankWeights:
    """The checkpoint's ranking weights (chosen on validation by `tune-chat`); likelihood alone without them."""
    return RankWeights.from_dict(ck.config.get("decoding", {}).get("ranking"))


# What the app and the CLI start from; a checkpoint's config.json may say better (its "decoding" entry,
# chosen on validation by `python -m nlp tune-chat`).
DEFAULT_DECODING = {
    "chat": {"strategy": "sample", "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1,
             "no_repeat_ngram_size": 3, "max_new_tokens": 40},
    "lm": {"strategy": "sample", "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1,
           "no_repeat_ngram_size": 3, "max_new_tokens": 80},
}


def default_decoding(ck: Checkpoint) -> GenerationConfig:
    """The decoding the app and the CLI use for this checkpoint unless told otherwise."""
    stored = ck.config.get("decoding", {})
    stored = {k: v for k, v in stored.items() if k != "ranking"} if isinstance(stored, dict) else {}
    return GenerationConfig.from_dict({**DEFAULT_DECODING.get(ck.task, {}), **stored})


@torch.no_grad()
def reply_attention(model, context_ids: list[int], reply_ids: list[int]) -> list[list[float]]:
    """Where the decoder looked (one row over the context per reply token) while reading `reply_ids`."""
    device = next(model.parameters()).device
    state = model.encode(torch.tensor([context_ids], device=device), torch.tensor([len(context_ids)]))
    weights = model.decode(state, torch.tensor([[BOS, *reply_ids]], device=device))[1][0]
    return weights[: len(reply_ids)].cpu().tolist()


def with_bans(ck: Checkpoint, cfg: GenerationConfig) -> GenerationConfig:
    """The decoding with WikiText's literal <unk> banned (unless cfg.allow_unk): a rare-word marker in the
    training text is no word to show a reader."""
    unk = ck.tokenizer.literal_unk_id
    if cfg.allow_unk or unk is None or unk in cfg.banned_ids:
        return cfg
    return dataclasses.replace(cfg, banned_ids=(*cfg.banned_ids, unk))


def readable_stream(pieces: Iterator[str], prompt: str = "") -> Iterator[str]:
    """detokenize_wikitext(prompt + the streamed text), a line at a time: a line is readable once it is whole
    (the detokenizer reads each line on its own, and within a line a later word can still move an earlier
    space, as "did" + " n't" -> "didn't"). Joined, the pieces equal the readable whole text."""
    raw, done = prompt, 0
    for piece in pieces:
        raw += piece
        end = raw.rfind("\n")
        if end >= done:
            yield detokenize_wikitext(raw[done:end + 1])
            done = end + 1
    if done < len(raw) or not raw:
        yield detokenize_wikitext(raw[done:])


@dataclass
class Generation:
    stream: Iterator[str] = iter(())
    tokens: int = 0
    seconds: float = 0.0
    text: str = ""                    # the continuation as the model wrote it (WikiText markup and all)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def continue_text(ck: Checkpoint, prompt: str, cfg: GenerationConfig,
                  generator: torch.Generator | None = None) -> Generation:
    """Stream the LM's continuation of `prompt`, counting tokens and time for a tokens/s figure."""
    ids = ck.tokenizer.encode(prompt)
    cfg = with_bans(ck, cfg)
    gen = Generation()

    def run() -> Iterator[str]:
        start = time.perf_counter()
        if cfg.strategy == "beam":
            best = beam_search(ck.model, ids, cfg)[0][0]
            gen.tokens, gen.seconds = len(best), time.perf_counter() - start
            gen.text = decode_text(ck.tokenizer, best, ids)
            yield gen.text
            return

        def counted() -> Iterator[int]:
            for t in sample_tokens(ck.model, ids, cfg, generator):
                gen.tokens += 1
                yield t
        for piece in stream_text(ck.tokenizer, counted(), ids):
            gen.text += piece
            gen.seconds = time.perf_counter() - start
            yield piece
        gen.seconds = time.perf_counter() - start

    gen.stream = run()
    return gen


@torch.no_grad()
def classify(ck: Checkpoint, texts: list[str], max_len: int = 256, batch_size: int = 64,
             rule: NeutralRule | None = None) -> list[dict]:
    """Label, probability, rating, whether VADER's lexicon finds an opinion in the text, verdict (positive /
    negative / neutral / mixed, by the checkpoint's NeutralRule unless `rule` is given) and per-token attention
    for each text (in input order)."""
    rule = rule or NeutralRule.of(ck)
    device = next(ck.model.parameters()).device
    whole = ck.tokenizer.encode_batch(texts)
    encoded = [ids[:max_len] or [EOS] for ids in whole]
    # the lexicon reads what the classifier reads: a long text's first max_len tokens (its cost grows with length)
    opinions = has_opinion([t if len(ids) <= max_len else ck.tokenizer.decode(ids[:max_len])
                            for t, ids in zip(texts, whole)])
    out: list[dict] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids, lengths = pad(chunk)
        r = ck.model(ids.to(device), lengths)
        probs = F.softmax(r["logits"].float(), -1).cpu()
        for i, seq in enumerate(chunk):
            item = {"label": int(probs[i].argmax()), "probability": float(probs[i].max()),
                    "p_positive": float(probs[i, 1]), "tokens": ck.tokenizer.pieces(seq),
                    "attention": r["attention"][i, : len(seq)].cpu().tolist()}
            if "rating" in r:
                item["rating"] = float(r["rating"][i]) * 4  # trained on rating / 4
            item["opinion"] = opinions[start + i]
            item["verdict"] = rule.verdict(item["label"], item["probability"], item.get("rating"), item["opinion"])
            out.append(item)
    return out
