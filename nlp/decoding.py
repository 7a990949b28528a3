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
from nlp.tokenizer import BOS, EOS

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
    cut_unfinished: bool = True       # chat, ranked or beam: a reply that ran into a length limit (the model's
                                      # trained one or max_new_tokens) and ends mid-sentence is cut back to its
                                      # last full sentence (ranking.SentenceCut, serve.length_cut)

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
        for name in ("stop_at_eos", "allow_unk", "cut_unfinished"):
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
def _follow_map(history: list[int], n: int) -> dict[tuple[int, ...], set[int]]:
    """Every (n-1)-token prefix in history -> the tokens that followed it (n = 1: () -> every token)."""
    follow: dict[tuple[int, ...], set[int]] = {}
    for i in range(len(history) - n + 1):
        follow.setdefault(tuple(history[i:i + n - 1]), set()).add(history[i + n - 1])
    return follow


def _next_bans(history: list[int], follow: dict[tuple[int, ...], set[int]], n: int) -> set[int]:
    """The tokens that would complete an n-gram already in history: those that followed its last n-1."""
    if len(history) < n - 1:
        return set()
    return follow.get(tuple(history[len(history) - n + 1:]), set())


class ScoreAdjuster:
    """Minimum length, banned ids, repetition penalty and n-gram bans on log-probs (K, V), one row per
    sequence being decoded (one for `sample_tokens`, the candidates of sample-and-rank, the beams).

    What a row's history implies is kept up to date one token at a time (`advance`) instead of recomputed
    from the whole history at every step: a (K, V) penalty to subtract (log(repetition_penalty) on the
    tokens already in the row, +inf on the banned ids) and, for the n-gram ban, each row's map from an
    (n-1)-token prefix to the tokens that followed it. A step then costs one subtraction and a dictionary
    look-up per row, not a pass over the history.

    Every decoding loop passes the model's scores through here first: a NaN or infinite one (weights or
    activations that overflowed) raises NonFiniteScores rather than yielding arbitrary tokens.
    """

    def __init__(self, cfg: GenerationConfig, histories: list[list[int]], vocab: int,
                 device: torch.device | str = "cpu", generated: int = 0):
        self.cfg, self.generated, self.n = cfg, generated, cfg.no_repeat_ngram_size
        self.histories = [list(h) for h in histories]
        self.banned = set(cfg.banned_ids)
        self.log_penalty = math.log(cfg.repetition_penalty)
        self.penalty = None
        if self.banned or cfg.repetition_penalty != 1.0:
            self.penalty = torch.zeros(len(histories), vocab, device=device)
            seen = [(r, t) for r, h in enumerate(self.histories) for t in set(h) if t not in self.banned]
            if cfg.repetition_penalty != 1.0 and seen:
                rows, toks = zip(*seen)
                self.penalty[list(rows), list(toks)] = self.log_penalty
            if self.banned:
                self.penalty[:, sorted(self.banned)] = float("inf")
        self.follow = [_follow_map(h, self.n) for h in self.histories] if self.n else None

    def __call__(self, scores: Tensor) -> Tensor:
        # one sum instead of an elementwise check: it is NaN or infinite exactly when a score is (log-probs
        # are far from the float range, so finite ones never add up to an overflow)
        if not math.isfinite(float(scores.sum())):
            raise NonFiniteScores("the model's next-token scores are not finite numbers (NaN or infinity): its "
                                  "weights or activations overflowed, so no text can be drawn from them")
        out = scores if self.penalty is None else scores - self.penalty
        early = self.generated < self.cfg.min_new_tokens
        rows: list[int] = []
        toks: list[int] = []
        if self.n:
            for r, (hist, follow) in enumerate(zip(self.histories, self.follow)):
                bans = _next_bans(hist, follow, self.n)
                rows += [r] * len(bans)
                toks += bans
        if early or rows:
            out = out.clone() if out is scores else out
            if early:
                out[:, EOS] = float("-inf")
            if rows:
                out[rows, toks] = float("-inf")
        return out

    def advance(self, parents: list[int], tokens: list[int]) -> None:
        """Next step's rows: row r continues this step's row parents[r] with tokens[r]. Rows that finished
        are left out; beam search may continue a row twice."""
        if parents != list(range(len(self.histories))):
            shared = {p for p in parents if parents.count(p) > 1}
            self.histories = [list(self.histories[p]) if p in shared else self.histories[p] for p in parents]
            if self.follow is not None:
                self.follow = [{k: set(v) for k, v in self.follow[p].items()} if p in shared else self.follow[p]
                               for p in parents]
            if self.penalty is not None:
                self.penalty = self.penalty[parents]
        seen = []
        for r, (hist, tok) in enumerate(zip(self.histories, tokens)):
            hist.append(tok)
            if self.n and len(hist) >= self.n:
                self.follow[r].setdefault(tuple(hist[len(hist) - self.n:-1]), set()).add(tok)
            if tok not in self.banned:
                seen.append(r)
        if self.penalty is not None and self.log_penalty and seen:
            self.penalty[seen, [tokens[r] for r in seen]] = self.log_penalty
        self.generated += 1


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


def choose(scores: Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> list[int]:
    """(K, V) adjusted log-probs -> the next token of each row: the most likely (greedy), or drawn from the
    filtered distribution.

    Every filter keeps a prefix of the tokens sorted by probability, so when it certainly ends among the k
    most likely, for k in CANDIDATES, only those are sorted, filtered and drawn from (`nucleus_size`,
    `draw_index`), in plain Python on the k numbers: right after a model step has streamed its weights
    through the caches, each tensor operation costs tens of microseconds, more than that arithmetic. Only
    when the candidates cannot tell is the whole vocabulary filtered (`filter_scores`).
    """
    if cfg.strategy == "greedy" or cfg.temperature < MIN_TEMPERATURE:
        return scores.argmax(-1).tolist()
    vocab = scores.shape[-1]
    probs = torch.softmax(scores / cfg.temperature, -1)
    if cfg.top_k or cfg.top_p < 1 or cfg.min_p > 0:
        for k in CANDIDATES:
            if k >= vocab or k <= cfg.top_k:
                continue
            top, ids = torch.topk(probs, k, -1)  # most likely first
            rows = top.tolist()
            sizes = [nucleus_size(row, cfg, vocab) for row in rows]
            if None in sizes:
                continue
            draws = torch.rand(len(rows), generator=generator).tolist()
            return [row_ids[draw_index(row[:m], u)] for row_ids, row, m, u in zip(ids.tolist(), rows, sizes, draws)]
        probs = torch.softmax(filter_scores(scores, cfg), -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist()


def draw_index(weights: list[float], u: float) -> int:
    """The index that a uniform number u in [0, 1) picks from weights in proportion (inverse CDF)."""
    target = u * sum(weights)
    total = 0.0
    for i, w in enumerate(weights):
        total += w
        if total > target:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)  # rounding left u past the end


# the most likely tokens that sampling considers first, then next (see `choose`); the 8,000-token LM's
# top-p 0.9 nucleus at temperature 0.8 is within 256 tokens in ~80% of steps and within 2,048 in all we saw
CANDIDATES = (256, 2048)


def nucleus_size(top: list[float], cfg: GenerationConfig, vocab: int) -> int | None:
    """How many of the most likely tokens top-k, top-p and min-p keep, from the probabilities of the
    len(top) most likely (in order; a softmax over the whole vocabulary); None when the filters may keep a
    token beyond them.

    Each filter keeps a prefix of that order, so when one cuts a token among these, every less likely
    token is cut too; when none does and there are more tokens, the list was too short to tell.
    """
    keep = len(top)
    total = 1.0
    if cfg.top_k:
        if cfg.top_k > keep:
            return None if keep < vocab else keep
        kth = top[cfg.top_k - 1]
        keep = next((i for i in range(cfg.top_k, keep) if top[i] < kth), keep)  # ties with the k-th stay
        total = sum(top[:keep])  # top-p is a share of what top-k kept
    if cfg.top_p < 1.0:
        before = 0.0
        for i in range(keep):
            if before >= cfg.top_p * total:  # the tokens above already hold the top-p mass
                keep = i
                break
            before += top[i]
    if cfg.min_p > 0:
        floor = cfg.min_p * top[0]
        keep = next((i for i in range(keep) if top[i] < floor), keep)
    return keep if keep < len(top) or len(top) == vocab else None


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
    adjuster = prompt_adjuster(model, prompt_ids, cfg, log_probs)
    for _ in range(cfg.max_new_tokens):
        tok = choose(adjuster(log_probs), cfg, generator)[0]
        if tok == EOS and cfg.stop_at_eos:
            return
        if trace is not None and "attn" in state:
            trace.append(state["attn"][0].cpu())
        yield tok
        adjuster.advance([0], [tok])
        log_probs, state = model.step(torch.tensor([tok], device=log_probs.device), state)


def reorder(state: dict, idx: Tensor) -> dict:
    """A decoding state's rows `idx`, in that order (the batch is dim 0 of every tensor)."""
    return {k: v.index_select(0, idx) for k, v in state.items()}


def prompt_adjuster(model, prompt_ids: list[int], cfg: GenerationConfig, log_probs: Tensor) -> ScoreAdjuster:
    """One row's ScoreAdjuster: the LM continues its prompt, so the prompt counts as text already written; the
    chat model's context is the encoder's input, so only the reply counts."""
    history = list(prompt_ids) if model.task == "lm" else []
    return ScoreAdjuster(cfg, [history], log_probs.shape[1], log_probs.device)


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], cfg: GenerationConfig,
                 generator: torch.Generator | None = None) -> list[list[int]]:
    """Greedy or sampled replies of the chat model to many contexts at once (for evaluation)."""
    from nlp.data import pad

    if model.task != "chat" or cfg.strategy == "beam":
        raise GenerationError("sample_batch serves the chat model with greedy or sampling decoding")
    model.eval()
    src, src_len = pad(prompts)
    return sample_from_state(model, model.start(src.to(next(model.parameters()).device), src_len), cfg,
                             generator).ids


@dataclass
class Draws:
    """The replies `sample_from_state` drew, one per row, and the model's log-probabilities read off the steps
    that drew them (before temperature, filters and bans): what ranking needs, without a teacher-forced pass.

    token_logp[r][t] is log p(token t | what came before) and eos_logp[r][t] is log p(EOS) at the same place,
    so row r has len(ids[r]) + 1 EOS entries, the last its own end (drawn, or scored by one more step when
    max_new_tokens cut it). shadow_*: the same numbers for the same tokens under the shadow rows' states
    (`sample_from_state(..., shadowed=True)`), e.g. an empty context for the mutual-information prior."""
    ids: list[list[int]]
    token_logp: list[list[float]]
    eos_logp: list[list[float]]
    shadow_token_logp: list[list[float]] | None = None
    shadow_eos_logp: list[list[float]] | None = None

    def mean_logprob(self, row: int, length: int | None = None, shadow: bool = False) -> float:
        """Row's mean log-probability per token of its first `length` tokens (default: all) and then EOS: what
        teacher forcing scores for reply[:length] + EOS, so a reply cut back after drawing is scored as cut."""
        tokens, eos = ((self.shadow_token_logp, self.shadow_eos_logp) if shadow else
                       (self.token_logp, self.eos_logp))
        k = len(self.ids[row]) if length is None else length
        return (math.fsum(tokens[row][:k]) + eos[row][k]) / (k + 1)


@torch.no_grad()
def sample_from_state(model, state: dict, cfg: GenerationConfig, generator: torch.Generator | None = None,
                      shadowed: bool = False) -> Draws:
    """One reply per row of an encoded chat state (sample-and-rank repeats a context's row for its candidates),
    with each token's log-probability and each position's EOS log-probability under the model (`Draws`).

    shadowed: the state's second half of rows shadows its first: shadow row B + r draws nothing; it is fed
    row r's tokens and records their log-probabilities under its own state, in the same batched steps (for
    sample-and-rank, an empty context: p(reply) for the mutual-information score, without a pass of its own)."""
    device = state["memory"].device
    rows_in = state["memory"].shape[0]
    B = rows_in // 2 if shadowed else rows_in
    log_probs, state = model.step(torch.full((rows_in,), BOS, device=device), state)
    out: list[list[int]] = [[] for _ in range(B)]
    token_logp: list[list[float]] = [[] for _ in range(B)]
    eos_logp: list[list[float]] = [[] for _ in range(B)]
    shadow_token = [[] for _ in range(B)] if shadowed else None
    shadow_eos = [[] for _ in range(B)] if shadowed else None
    active = list(range(B))  # rows still writing; finished rows leave the batch, so each step is cheaper
    adjuster = ScoreAdjuster(cfg, out, log_probs.shape[1], device)
    for step in range(cfg.max_new_tokens + 1):
        m = len(active)
        if step == cfg.max_new_tokens:  # the rows still open were cut: score their EOS
            ends = log_probs[:, EOS].tolist()
            for pos, i in enumerate(active):
                eos_logp[i].append(ends[pos])
                if shadowed:
                    shadow_eos[i].append(ends[m + pos])
            break
        toks = choose(adjuster(log_probs[:m]), cfg, generator)
        fed = toks + toks if shadowed else toks
        picked = log_probs.gather(1, torch.tensor([[t, EOS] for t in fed], device=device)).tolist()
        keep = []
        for pos, (i, t) in enumerate(zip(active, toks)):
            eos_logp[i].append(picked[pos][1])
            if shadowed:
                shadow_eos[i].append(picked[m + pos][1])
            if t != EOS:
                out[i].append(t)
                token_logp[i].append(picked[pos][0])
                if shadowed:
                    shadow_token[i].append(picked[m + pos][0])
                keep.append(pos)
        if not keep:
            break
        if len(keep) < m:
            rows = keep + [m + p for p in keep] if shadowed else keep
            state = reorder(state, torch.tensor(rows, device=device))
            active, toks = [active[p] for p in keep], [toks[p] for p in keep]
        adjuster.advance(keep, toks)
        log_probs, state = model.step(torch.tensor(toks + toks if shadowed else toks, device=device), state)
    return Draws(out, token_logp, eos_logp, shadow_token, shadow_eos)
