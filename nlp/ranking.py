"""Choosing a chat reply among candidates: the score that sample-and-rank, the app and `eval`'s Hits@1 share.

    score(context, reply) = head * s_head(context, reply)
                          + likelihood * [ mean log p(reply | context) - mi * mean log p(reply | empty context) ]
                          + overlap * s_overlap(context, reply)

  s_head      the next-reply head: a learned scale times the cosine of the context and reply vectors
              (trained against in-batch distractors; TransferTransfo, Wolf et al. 2019)
  likelihood  the decoder's mean log-probability per reply token (EOS included), so long replies are not
              punished for their length
  mi          the mutual-information penalty of Li et al. 2016, log p(r|c) - lambda log p(r): generic replies
              ("I don't know") are likely under any context and lose their advantage. p(r) is the same model
              given an empty context (a lone <sep>), which it learns when trained with empty_context_rate > 0.
  s_overlap   what the reply shares with the context, word for word (`Overlap`): the model alone ranks the true
              reply first among 20 less often than plain TF-IDF does, and the two disagree enough that together
              they beat both (docs/chat.md: Chat model).
The weights are chosen on validation (`python -m nlp tune-chat`) and stored in the checkpoint's config.json
under "decoding", beside the number of sampled candidates.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from nlp.cpu_serving import fused_turn
from nlp.data import pad
from nlp.decoding import sample_from_state
from nlp.tokenizer import BOS, EOS, SEP

EMPTY_CONTEXT = [SEP]  # what the model sees as "no context" (see TrainConfig.empty_context_rate)


@dataclass
class RankWeights:
    head: float = 0.0
    likelihood: float = 1.0
    mi: float = 0.0
    overlap: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> RankWeights:
        d = d or {}
        return cls(**{k: float(d[k]) for k in ("head", "likelihood", "mi", "overlap")
                      if isinstance(d.get(k), (int, float))})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Components:
    """Per candidate (a flat tensor over all candidates of all contexts, in order)."""
    loglik: Tensor          # mean log p(reply | context) per token
    head: Tensor | None     # next-reply head score (None when the model has no head)
    overlap: Tensor | None = None  # Overlap of each candidate with its context (None when not weighed)


class Overlap:
    """How much a reply shares with its context, word for word: the cosine of their bags of tokenizer pieces,
    each piece counted 1 + log(count) times (sublinear TF) and weighted by its information squared,
    (-log p(piece))^2 under the tokenizer's own unigram model: an IDF that comes with every checkpoint, so
    serving needs no corpus. "▁the" or "▁I" weigh little, "▁hiking" much; special and byte pieces nothing.
    Compared on chitchat validation rows by Hits@1 of 20 beside the model's score, squared information did
    better than plain information and nearly as well as document frequencies counted on the (lowercased)
    training split, which would need a table of their own.
    With reply_once, a reply's pieces count once each however often they occur, so a candidate cannot raise its
    overlap by repeating the context's rarest word (scripts/overlap_weight.py compares the two)."""

    def __init__(self, piece_weights: list[float], reply_once: bool = False):
        self.piece_weights = piece_weights
        self.reply_once = reply_once

    @classmethod
    def of(cls, tokenizer) -> Overlap:
        """The overlap under `tokenizer`'s pieces, built once per tokenizer (a chat reply reuses it)."""
        return _overlap_of(tokenizer)

    @functools.cached_property
    def weights(self) -> Tensor:
        """The piece weights as a tensor (vocabulary,), for vectorised use (nlp.ranker.soft_match)."""
        return torch.tensor(self.piece_weights, dtype=torch.float)

    def vector(self, ids: list[int], once: bool = False) -> tuple[dict[int, float], float]:
        """The weighted bag of a text's pieces (sparse; each counted once with `once`) and its length."""
        v = {t: (1.0 if once else 1.0 + math.log(c)) * self.piece_weights[t] for t, c in Counter(ids).items()
             if self.piece_weights[t] > 0}
        return v, math.sqrt(sum(x * x for x in v.values()))

    def __call__(self, contexts: list[list[int]], replies: list[list[int]]) -> Tensor:
        """The overlap of each reply with its context (pairs in order; a context may repeat)."""
        cache: dict[tuple, tuple[dict[int, float], float]] = {}
        out = []
        for ctx, reply in zip(contexts, replies, strict=True):
            key = tuple(ctx)
            if key not in cache:
                cache[key] = self.vector(ctx)
            cv, cn = cache[key]
            rv, rn = self.vector(reply, self.reply_once)
            dot = sum(x * cv.get(t, 0.0) for t, x in rv.items())
            out.append(dot / (cn * rn) if cn and rn else 0.0)
        return torch.tensor(out)


@functools.lru_cache(maxsize=4)
def _overlap_of(tokenizer) -> Overlap:
    return Overlap([w * w for w in tokenizer.piece_information])


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def components(model, contexts: list[list[int]], candidates: list[list[list[int]]], batch_rows: int = 256) \
        -> Components:
    """Score each context's candidates: contexts (C lists of ids), candidates[c] (a list of replies, ids without
    BOS/EOS). Each context is encoded once and its state repeated for its candidates."""
    model.eval()
    dev = _device(model)
    logliks, heads = [], []
    start = 0
    while start < len(contexts):  # groups of contexts whose candidates fill about batch_rows rows
        end, rows = start, 0
        while end < len(contexts) and (rows == 0 or rows + len(candidates[end]) <= batch_rows):
            rows += len(candidates[end])
            end += 1
        ctx = [c or EMPTY_CONTEXT for c in contexts[start:end]]
        cands = [r for group in candidates[start:end] for r in group]
        src, src_len = pad(ctx)
        state = model.encode(src.to(dev), src_len)
        owner = torch.tensor([i for i, g in enumerate(candidates[start:end]) for _ in g], device=dev)
        expanded = {k: v.index_select(0, owner) for k, v in state.items()}
        tgt_in, _ = pad([[BOS] + r for r in cands])
        tgt_out, _ = pad([r + [EOS] for r in cands])
        tgt_in, tgt_out = tgt_in.to(dev), tgt_out.to(dev)
        logliks.append(model.reply_logprob(expanded, tgt_in, tgt_out))
        if has_head(model):
            heads.append(head_scores(model, expanded["pooled"], cands))
        start = end
    return Components(torch.cat(logliks).cpu(), torch.cat(heads).cpu() if heads else None)


def has_head(model) -> bool:
    return bool(getattr(model.config, "rank_dim", 0))


def head_scores(model, pooled: Tensor, replies: list[list[int]]) -> Tensor:
    """The next-reply head's score of each reply against its own context's pooled encoding (one row each)."""
    reply, reply_len = pad([r or [EOS] for r in replies])
    rep_vec = model.reply_vectors(reply.to(pooled.device), reply_len)
    return model.head_scale() * (model.context_vectors(pooled) * rep_vec).sum(-1)


@torch.no_grad()
def context_similarity(model, tokenizer, message: str, contexts: list[str], max_len: int = 64) -> list[float]:
    """How close in meaning each training context turn is to the user's message: the cosine of the encoder's
    pooled states of the two, each encoded alone as a one-turn context. A retrieved reply fits when the turn
    it answered asked what the user asks; word matches (BM25) find the turn, this says whether it means the
    same (on round 1's blind labels it told sensible retrieved replies from the rest with AUC 0.80, the BM25
    match 0.66; docs/chat.md)."""
    if not contexts:
        return []
    src, src_len = pad([tokenizer.encode_turns([t], max_len) or EMPTY_CONTEXT for t in [message, *contexts]])
    with fused_turn(src):
        pooled = model.encode(src.to(_device(model)), src_len)["pooled"].float()
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return (pooled[1:] @ pooled[0]).tolist()


@torch.no_grad()
def prior_loglik(model, replies: list[list[int]], batch_rows: int = 256) -> Tensor:
    """mean log p(reply | empty context) per token, for the mutual-information term."""
    out = []
    for start in range(0, len(replies), batch_rows):
        chunk = replies[start:start + batch_rows]
        out.append(components(model, [EMPTY_CONTEXT], [chunk], batch_rows=len(chunk)).loglik)
    return torch.cat(out) if out else torch.zeros(0)


def combine(comp: Components, weights: RankWeights, prior: Tensor | None = None) -> Tensor:
    """The ranking score of each candidate (higher is better)."""
    score = weights.likelihood * comp.loglik
    if weights.mi and prior is not None:
        score = score - weights.likelihood * weights.mi * prior
    if weights.head and comp.head is not None:
        score = score + weights.head * comp.head
    if weights.overlap and comp.overlap is not None:
        score = score + weights.overlap * comp.overlap
    return score


def needs_prior(weights: RankWeights) -> bool:
    return bool(weights.mi and weights.likelihood)


@dataclass(frozen=True)
class SentenceCut:
    """Cuts a reply that ran into the chat model's length limit back to its last full sentence.

    The model was trained on replies cut at `limit` tokens (14% of Chit-Chat's training replies are longer),
    so it learned to stop there mid-sentence, and the ranking favoured such long replies: 5% of the shown
    replies on 500 validation rows were cut off ("... I feel like I can'"). It stops near the limit, not
    at it: of its replies of limit-5 to limit-1 tokens, 30% end a sentence; at the limit, 10%; its training
    replies of those lengths, 45%. So a reply of at least limit - `margin` tokens whose last token ends no
    sentence is cut after the last token that does, if any (`ends`: ids of pieces ending in . ! ? ...).
    A model trained on longer replies than the sampler draws runs into the sampler's limit instead, exactly
    there (margin 0; nlp.serve.length_cut chooses)."""
    limit: int
    ends: frozenset[int]
    margin: int = 5

    def unfinished(self, ids: list[int]) -> bool:
        """Whether the reply ran into the limit and ends no sentence."""
        return len(ids) >= max(1, self.limit - self.margin) and ids[-1] not in self.ends

    def __call__(self, ids: list[int]) -> list[int]:
        if not self.unfinished(ids):
            return ids
        last = max((k for k, t in enumerate(ids) if t in self.ends), default=None)
        return ids if last is None else ids[:last + 1]


@torch.no_grad()
def sample_and_rank(model, prompts: list[list[int]], cfg, weights: RankWeights, generator=None,
                    cut: SentenceCut | None = None, overlap: Overlap | None = None) -> list[list[dict]]:
    """Sample-and-rank (Adiwardana et al. 2020): cfg.num_candidates replies sampled for each prompt in one
    batch, scored by `combine`; returns, per prompt, its distinct candidates best first, each
    {"ids", "score", "loglik", "head", "prior", "overlap"}. With `cut`, the candidates are the cut replies,
    scored as such; `overlap` measures what weights.overlap weighs (without it that term is left out).

    Each context is encoded once and its state repeated for its candidates. Their likelihood, a cut reply's
    included, comes from the sampling steps themselves (`sample_from_state`), and so does the prior: an empty
    context, encoded beside the prompts, shadows every candidate in the same batched steps. Only the head needs
    a pass of its own (the encoder over the replies). On the CPU one batch of prompts is ranked at a time per
    process (`fused_turn`)."""
    model.eval()
    n = max(1, cfg.num_candidates)
    per_batch = max(1, 256 // n)
    out: list[list[dict]] = []
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start:start + per_batch]
        src, src_len = pad(chunk + ([EMPTY_CONTEXT] if needs_prior(weights) else []))
        src = src.to(_device(model))
        with fused_turn(src):
            out += _rank_batch(model, chunk, src, src_len, n, cfg, weights, generator, cut, overlap)
    return out


def _rank_batch(model, prompts: list[list[int]], src: Tensor, src_len: Tensor, n: int, cfg, weights: RankWeights,
                generator, cut: SentenceCut | None, overlap: Overlap | None) -> list[list[dict]]:
    """src: the prompts, padded, and after them the empty context when the prior is weighed."""
    B = len(prompts)
    shadowed = src.shape[0] > B
    state = model.encode(src, src_len)
    owner = torch.arange(B, device=src.device).repeat_interleave(n)
    if shadowed:  # every candidate's row, then its shadow under the empty context (row B of the state)
        owner = torch.cat([owner, torch.full_like(owner, B)])
    draws = sample_from_state(model, {k: v.index_select(0, owner) for k, v in state.items()}, cfg, generator,
                              shadowed)
    sampled = [cut(ids) for ids in draws.ids] if cut is not None else draws.ids
    groups: list[list[int]] = []  # per prompt, the row of each distinct candidate
    for i in range(B):
        seen: dict[tuple, int] = {}
        for row in range(i * n, (i + 1) * n):
            seen.setdefault(tuple(sampled[row]), row)
        groups.append(list(seen.values()))
    rows = [row for g in groups for row in g]
    flat = [sampled[row] for row in rows]
    head = None
    if has_head(model):
        head = head_scores(model, state["pooled"].index_select(0, owner[rows]), flat).cpu()
    shared = overlap([prompts[row // n] for row in rows], flat) if overlap and weights.overlap else None
    loglik = torch.tensor([draws.mean_logprob(row, len(sampled[row])) for row in rows])
    comp = Components(loglik, head, shared)
    prior = torch.tensor([draws.mean_logprob(row, len(sampled[row]), shadow=True) for row in rows]) \
        if shadowed else None
    scores = combine(comp, weights, prior)
    cands = [{"ids": ids, "score": float(scores[k]), "loglik": float(comp.loglik[k]),
              "head": None if comp.head is None else float(comp.head[k]),
              "prior": None if prior is None else float(prior[k]),
              "overlap": None if shared is None else float(shared[k])} for k, ids in enumerate(flat)]
    out, k = [], 0
    for g in groups:  # each prompt's candidates are consecutive in flat
        out.append(sorted(cands[k:k + len(g)], key=lambda c: -c["score"]))
        k += len(g)
    return out
