"""Decoding for the LM and the chat decoder: greedy, sampling, beam search, streaming.

Both models offer the same step interface (see `nlp.models`): `prime()` below turns a prompt into the
first next-token log-probabilities and a state, and `model.step(tokens, state)` advances one token.

Sampling controls, applied in this order to the next-token scores:
  min_new_tokens       the end (EOS) is banned until this many tokens are out (default 1: never an empty reply)
  repetition_penalty   a token already in the text has its probability divided by it (> 1 discourages
                       repeats; the spirit of CTRL's penalty, Keskar et al. 2019, made independent of the
                       arbitrary offset of logits by applying it to probabilities)
  no_repeat_ngram_size a token that would complete an n-gram already in the text is banned
  temperature          divides the scores: < 1 sharper and more predictable, > 1 flatter; 0 (or < 0.001) is greedy
  top_k                keep the k most likely tokens (0 = all)
  top_p                keep the smallest set whose probability reaches p (nucleus sampling, Holtzman 2020)
  min_p                drop tokens less likely than min_p times the most likely one
Every call takes its own `torch.Generator`: a seed reproduces a sample and sessions never share RNG state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from nlp.errors import GenerationError, NonFiniteScores
from nlp.tokenizer import BOS, EOS, Tokenizer

STRATEGIES = ("greedy", "sample", "beam")
MIN_TEMPERATURE = 1e-3  # below this, sampling is greedy (dividing by a tinier one overflows the scores)


def is_whole(value) -> bool:
    """An int that is not a bool (JSON and argparse give both)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class GenerationConfig:
    strategy: str = "sample"          # greedy | sample | beam
    max_new_tokens: int = 60
    min_new_tokens: int = 1           # no EOS before this many tokens: 1 = never an empty reply
    temperature: float = 0.8          # lower = more predictable; 0 = always the most likely token
    top_k: int = 0                    # 0 = no limit
    top_p: float = 0.9                # 1.0 = no limit
    min_p: float = 0.0
    repetition_penalty: float = 1.0   # 1.0 = off
    no_repeat_ngram_size: int = 0     # 0 = off
    num_beams: int = 4
    length_penalty: float = 1.0       # beam score = log-prob / length ** length_penalty
    num_return_sequences: int = 1     # n-best for beam search
    stop_at_eos: bool = True          # the LM's end of line; when False it becomes a newline
    num_candidates: int = 1           # chat, sampling: draw this many replies and show the best by the ranking
    banned_ids: tuple[int, ...] = ()  # never produced (nlp.serve bans WikiText's literal <unk> unless allow_unk)
    allow_unk: bool = False           # let the LM write WikiText's <unk> marker for rare words

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise GenerationError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GenerationError(f"{name} must be a finite number, got {value!r}")
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "no_repeat_ngram_size", "num_beams",
                     "num_return_sequences", "num_candidates"):
            if not is_whole(getattr(self, name)):
                raise GenerationError(f"{name} must be a whole number, got {getattr(self, name)!r}")
        for name in ("stop_at_eos", "allow_unk"):
            if not isinstance(getattr(self, name), bool):
                raise GenerationError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.banned_ids, tuple) or not all(is_whole(t) and t >= 0 for t in self.banned_ids):
            raise GenerationError(f"banned_ids must be a list of token ids, got {self.banned_ids!r}")
        checks = [(self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
                  (0 <= self.min_new_tokens <= self.max_new_tokens,
                   "min_new_tokens must be between 0 and max_new_tokens"),
                  (self.temperature >= 0, "temperature must be >= 0"),
                  (self.top_k >= 0, "top_k must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
                  (self.num_beams >= 1, "num_beams must be >= 1"),
                  (1 <= self.num_candidates <= 64, "num_candidates must be between 1 and 64"),
                  (1 <= self.num_return_sequences <= max(1, self.num_beams),
                   "num_return_sequences must be between 1 and num_beams")]
        for ok, msg in checks:
            if not ok:
                raise GenerationError(msg)

    @classmethod
    def from_dict(cls, d: dict) -> GenerationConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names and v is not None}
        if isinstance(values.get("banned_ids"), list):  # a list when read back from JSON
            values["banned_ids"] = tuple(values["banned_ids"])
        return cls(**values)


def make_generator(seed: int | None = None, device: str | torch.device = "cpu") -> torch.Generator:
    """A private RNG: seeded for reproducible samples, from the OS when seed is None."""
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    return g


# --------------------------------------------------------------------------- score processing
def history_tensor(histories: list[list[int]], device: torch.device | str = "cpu") -> Tensor:
    """(K, L) token ids, each history right-aligned and left-padded with -1 (so the last tokens line up)."""
    width = max((len(h) for h in histories), default=0)
    out = torch.full((len(histories), width), -1, dtype=torch.long)
    for row, hist in enumerate(histories):
        if hist:
            out[row, width - len(hist):] = torch.as_tensor(hist, dtype=torch.long)
    return out.to(device)


def banned_ngram_mask(hist: Tensor, n: int, vocab: int) -> Tensor:
    """(K, V) True where a token would complete an n-gram already in the row's history ((K, L), -1 = pad).

    Every window of n tokens whose first n-1 equal the row's last n-1 tokens bans its last token: one
    vectorised comparison of all windows of all rows instead of a Python loop over rows.
    """
    K, L = hist.shape
    counts = torch.zeros(K, vocab, dtype=torch.int32, device=hist.device)
    if n <= 0 or L < n:
        return counts > 0
    if n == 1:
        last, hit = hist, hist >= 0
    else:
        windows = hist.unfold(1, n, 1)                                # (K, L-n+1, n)
        prefix = hist[:, L - n + 1:]                                  # (K, n-1): the last n-1 tokens
        last = windows[:, :, -1]
        hit = (windows[:, :, :-1] == prefix.unsqueeze(1)).all(-1)     # (K, L-n+1)
        hit &= (prefix >= 0).all(-1, keepdim=True) & (last >= 0)
    # several windows can end in the same token: add, so that a miss never overwrites a hit
    return counts.scatter_add_(1, last.clamp(min=0), hit.to(torch.int32)) > 0


def banned_ngram_tokens(history: list[int], n: int, vocab: int | None = None) -> set[int]:
    """Tokens that would complete an n-gram already present in history."""
    if not history:
        return set()
    mask = banned_ngram_mask(history_tensor([history]), n, vocab or max(history) + 1)
    return set(mask[0].nonzero().flatten().tolist())


def adjust(scores: Tensor, histories: list[list[int]], cfg: GenerationConfig, generated: int) -> Tensor:
    """Minimum length, repetition penalty and n-gram bans on log-probs (K, V), one history per row;
    `generated` tokens are out so far. Vectorised over rows (sample-and-rank decodes many at once).
    Every decoding loop passes the model's scores through here first: a NaN or infinite one (weights or
    activations that overflowed) raises NonFiniteScores rather than yielding arbitrary tokens."""
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteScores("the model's next-token scores are not finite numbers (NaN or infinity): its "
                              "weights or activations overflowed, so no text can be drawn from them")
    early = generated < cfg.min_new_tokens
    if cfg.repetition_penalty == 1.0 and not cfg.no_repeat_ngram_size and not early and not cfg.banned_ids:
        return scores
    scores = scores.clone()
    if early:
        scores[:, EOS] = float("-inf")
    if cfg.banned_ids:
        scores[:, list(cfg.banned_ids)] = float("-inf")
    if not any(histories) or (cfg.repetition_penalty == 1.0 and not cfg.no_repeat_ngram_size):
        return scores
    hist = history_tensor(histories, scores.device)
    V = scores.shape[1]
    if cfg.repetition_penalty != 1.0:
        seen = banned_ngram_mask(hist, 1, V)
        scores = scores - seen.to(scores.dtype) * math.log(cfg.repetition_penalty)
    if cfg.no_repeat_ngram_size:
        scores = scores.masked_fill(banned_ngram_mask(hist, cfg.no_repeat_ngram_size, V), float("-inf"))
    return scores


def filter_scores(scores: Tensor, cfg: GenerationConfig) -> Tensor:
    """Temperature, top-k, top-p and min-p on (K, V) scores; what is cut becomes -inf."""
    scores = scores / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(scores, min(cfg.top_k, scores.shape[-1]), -1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, -1, descending=True)
        probs = torch.softmax(sorted_scores, -1)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= cfg.top_p   # the top token always stays (its 'before' is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    if cfg.min_p > 0:
        probs = torch.softmax(scores, -1)
        scores = scores.masked_fill(probs < cfg.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return scores


def choose(scores: Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(K, V) adjusted log-probs -> (K,) next tokens: the most likely (greedy), or drawn from the filtered
    distribution.

    Drawn as torch.multinomial draws one sample (an exponential race: the token with the largest p / q, one
    q ~ Exp(1) per token), with the same numbers from the generator, so a seed gives the same text as with
    multinomial. When the filters certainly keep only tokens among the CANDIDATES most likely, only those
    are filtered and raced (`draw_among_candidates`): no sort of the whole vocabulary, the same winner.
    """
    if cfg.strategy == "greedy" or cfg.temperature < MIN_TEMPERATURE:
        return scores.argmax(-1)
    q = torch.empty_like(scores).exponential_(1, generator=generator)
    picked = draw_among_candidates(scores, cfg, q)
    if picked is not None:
        return picked
    return (torch.softmax(filter_scores(scores, cfg), -1) / q).argmax(-1)


CANDIDATES = 256  # the most likely tokens that sampling considers first (see draw_among_candidates)


def draw_among_candidates(scores: Tensor, cfg: GenerationConfig, q: Tensor) -> Tensor | None:
    """The token `choose` draws with the race numbers `q` (K, V), found among the CANDIDATES most likely
    tokens; None when the filters might keep a token outside them (then the whole vocabulary is used).

    Every token outside is at most as likely as the last candidate, so it is certainly cut when that one is
    cut for a reason that holds for all less likely tokens: it is past the top-k, the candidates already hold
    the top-p mass, or it is under the min-p share of the most likely token.
    """
    if scores.shape[-1] <= CANDIDATES or cfg.top_k >= CANDIDATES or not (cfg.top_k or cfg.top_p < 1
                                                                          or cfg.min_p > 0):
        return None
    top, ids = torch.topk(scores / cfg.temperature, CANDIDATES, -1)  # most likely first
    certain = torch.zeros(top.shape[0], dtype=torch.bool, device=top.device)
    if cfg.top_k:
        kth = top[:, cfg.top_k - 1:cfg.top_k]
        certain |= top[:, -1] < kth[:, 0]  # (equal scores past the candidates would be kept)
        top = top.masked_fill(top < kth, float("-inf"))
        log_total = torch.logsumexp(top, -1, keepdim=True)  # what filter_scores' softmax sums: the top-k
    else:
        log_total = torch.logsumexp(scores / cfg.temperature, -1, keepdim=True)
    if cfg.top_p < 1.0:
        probs = torch.exp(top - log_total)
        cumulative = probs.cumsum(-1)
        top = top.masked_fill(cumulative - probs >= cfg.top_p, float("-inf"))
        certain |= cumulative[:, -1] >= cfg.top_p
    if cfg.min_p > 0:
        probs = torch.softmax(top, -1)
        cut = probs < cfg.min_p * probs[:, :1]
        top = top.masked_fill(cut, float("-inf"))
        certain |= cut[:, -1]
    if not bool(certain.all()):
        return None
    race = torch.softmax(top, -1) / q.gather(-1, ids)
    return ids.gather(-1, race.argmax(-1, keepdim=True)).squeeze(-1)


# --------------------------------------------------------------------------- the loops
def prime(model, prompt_ids: list[int]) -> tuple[Tensor, dict]:
    """First next-token log-probs (1, V) and state, for either model.

    LM: the prompt is encoded in one fused call, after an EOS, since training text is lines that each end in
    EOS (so an empty prompt starts a fresh line). Chat: the prompt is the encoder input; the decoder starts
    from BOS.
    """
    device = next(model.parameters()).device
    if model.task == "lm":
        return model.start(torch.tensor([[EOS, *prompt_ids]], dtype=torch.long, device=device))
    if not prompt_ids:
        raise GenerationError("the chat model needs a non-empty message")
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    state = model.start(ids)
    return model.step(torch.tensor([BOS], device=ids.device), state)


@torch.no_grad()
def sample_tokens(model, prompt_ids: list[int], cfg: GenerationConfig, generator: torch.Generator | None = None,
                  trace: list | None = None) -> Iterator[int]:
    """Greedy or sampled continuation, one token id at a time (EOS is yielded only when stop_at_eos=False).

    `trace`, when given, receives the decoder's attention row (S,) of each yielded token (chat model only).
    """
    model.eval()
    log_probs, state = prime(model, prompt_ids)
    history = list(prompt_ids) if model.task == "lm" else []
    for step in range(cfg.max_new_tokens):
        tok = int(choose(adjust(log_probs, [history], cfg, step), cfg, generator)[0])
        if tok == EOS and cfg.stop_at_eos:
            return
        if trace is not None and "attn" in state:
            trace.append(state["attn"][0].cpu())
        yield tok
        history.append(tok)
        log_probs, state = model.step(torch.tensor([tok], device=log_probs.device), state)


def _reorder(state: dict, idx: Tensor) -> dict:
    return {k: v.index_select(0, idx) for k, v in state.items()}


@torch.no_grad()
def beam_search(model, prompt_ids: list[int], cfg: GenerationConfig) -> list[tuple[list[int], float]]:
    """n-best (token ids without EOS, length-normalised log-prob), best first."""
    model.eval()
    K = cfg.num_beams
    log_probs, state = prime(model, prompt_ids)
    prefix = list(prompt_ids) if model.task == "lm" else []
    beams: list[list[int]] = [[]]
    scores = torch.zeros(1, device=log_probs.device)
    finished: list[tuple[list[int], float]] = []

    def normalised(score: float, length: int) -> float:
        return score / (max(length, 1) ** cfg.length_penalty)

    for step in range(cfg.max_new_tokens):
        lp = adjust(log_probs, [prefix + b for b in beams], cfg, step)
        cand = (scores.unsqueeze(1) + lp).view(-1)
        top = torch.topk(cand, min(2 * K, cand.numel()))
        keep_rows, keep_toks, keep_scores = [], [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            if math.isinf(score):
                break
            row, tok = divmod(flat, lp.shape[1])
            if tok == EOS:
                finished.append((beams[row], normalised(score, len(beams[row]) + 1)))
            else:
                keep_rows.append(row)
                keep_toks.append(tok)
                keep_scores.append(score)
            if len(keep_rows) == K:
                break
        if len(finished) >= K or not keep_rows:
            break
        idx = torch.tensor(keep_rows, device=scores.device)
        beams = [beams[r] + [t] for r, t in zip(keep_rows, keep_toks)]
        scores = torch.tensor(keep_scores, device=scores.device)
        if step == cfg.max_new_tokens - 1:
            break
        log_probs, state = model.step(torch.tensor(keep_toks, device=idx.device), _reorder(state, idx))
    if len(finished) < K:  # out of steps: unfinished beams compete too
        finished += [(b, normalised(float(s), len(b))) for b, s in zip(beams, scores.tolist())]
    finished.sort(key=lambda x: -x[1])
    return finished[:cfg.num_return_sequences]


# --------------------------------------------------------------------------- text
def decode_text(tokenizer: Tokenizer, ids: list[int], prompt_ids: list[int] = ()) -> str:
    """Text of `ids` as it continues `prompt_ids` (so a leading space survives); EOS reads as a newline."""
    def text(seq: list[int]) -> str:
        parts, cur = [], []
        for i in seq:
            if i == EOS:
                parts.append(tokenizer.decode(cur))
                cur = []
            else:
                cur.append(i)
        return "\n".join(parts + [tokenizer.decode(cur)])

    if not prompt_ids:
        return text(list(ids))
    head = text(list(prompt_ids))
    full = text(list(prompt_ids) + list(ids))
    return full[len(head):] if full.startswith(head) else full


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int], prompt_ids: list[int] = ()) -> Iterator[str]:
    """Text pieces as tokens arrive; joined they equal `decode_text` of all the tokens.

    A piece is held back while the text ends in an incomplete UTF-8 sequence (byte-fallback tokens decode
    to U+FFFD until the character's last byte arrives).
    """
    ids: list[int] = []
    emitted = ""
    for tok in tokens:
        ids.append(tok)
        text = decode_text(tokenizer, ids, prompt_ids)
        safe = text.rstrip("\ufffd")
        if safe.startswith(emitted) and len(safe) > len(emitted):
            yield safe[len(emitted):]
            emitted = safe
    final = decode_text(tokenizer, ids, prompt_ids)
    if final.startswith(emitted) and len(final) > len(emitted):
        yield final[len(emitted):]


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], cfg: GenerationConfig,
                 generator: torch.Generator | None = None) -> list[list[int]]:
    """Greedy or sampled replies of the chat model to many contexts at once (for evaluation)."""
    if model.task != "chat" or cfg.strategy == "beam":
        raise GenerationError("sample_batch serves the chat model with greedy or sampling decoding")
    from nlp.data import pad

    model.eval()
    device = next(model.parameters()).device
    src, src_len = pad(prompts)
    state = model.start(src.to(device), src_len)
    B = len(prompts)
    log_probs, state = model.step(torch.full((B,), BOS, device=device), state)
    out: list[list[int]] = [[] for _ in range(B)]
    active = list(range(B))  # rows still writing; finished rows leave the batch, so each step is cheaper
    for step in range(cfg.max_new_tokens):
        toks = choose(adjust(log_probs, [out[i] for i in active], cfg, step), cfg, generator).tolist()
        keep = []
        for pos, (i, t) in enumerate(zip(active, toks)):
            if t != EOS:
                out[i].append(t)
                keep.append(pos)
        if not keep or step == cfg.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            idx = torch.tensor(keep, device=device)
            state, active, toks = _reorder(state, idx), [active[p] for p in keep], [toks[p] for p in keep]
        log_probs, state = model.step(torch.tensor(toks, device=device), state)
    return out
