"""The chat's learned ranker: which candidate reply fits this conversation, human or written by the decoder.

    features(model, tokenizer, context_ids, replies)  ->  (N, F) for one context and N candidate replies
    score = Ranker(features)                           ->  (N,) higher is better

The features come from the chat model itself, frozen: how likely the decoder finds the reply after this
context (mean log-probability a token) and after no context (the prior of Li et al. 2016's mutual-information
score), the next-reply head's score, and the reply's length; and two counts read off the reply's text: how
often its most repeated content word occurs, and its share of distinct words (the decoder's failing is to
repeat the topic word: "I work at work and working on the work ..."). A small MLP scores them. (The decoder's
attentional vectors as further features fitted the training rows better and the validation rows worse.)

It is trained against the candidates it meets when serving (nlp.train_ranker): for each sampled training row,
its own reply beside the replies that the reply index (nlp.retrieval) finds for the most similar training
contexts, two random replies, and replies the decoder samples for the row's context under the default
decoding. The replies of similar contexts share the topic, so the ranker must learn which one answers *this*
message (random distractors, the next-reply head's training, only teach the topic); the decoder's own samples
are likelier under the model than any human reply, so a score that trusts likelihood prefers them, which blind
judges found rarely made sense. The number of epochs is chosen on validation rows by Hits@1 among the same
kinds of candidates.

The ranker is stored beside the weights it reads (`ranker.safetensors`, `ranker.json` with the sha256 of
model.safetensors): a ranker trained on other weights is refused, since its features would mean other things.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from nlp.checkpoint import WEIGHTS, Checkpoint, write_json
from nlp.cpu_serving import fused_turn
from nlp.data import pad
from nlp.english import STOP_WORDS
from nlp.errors import CheckpointError
from nlp.ranking import EMPTY_CONTEXT, has_head, head_scores
from nlp.runtime import cpu_has_native_bf16
from nlp.tokenizer import BOS, EOS, PAD

RANKER_WEIGHTS, RANKER_CONFIG = "ranker.safetensors", "ranker.json"
OVERLAP_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # tried beside the ranker; its scores span a few units
SCALARS = ("loglik", "prior", "head", "log_length", "top_word_repeats", "distinct_words")
ROWS = 8  # candidate rows decoded at once when scoring (8 sessions scoring in one server share its memory)
MAX_REPLY_TOKENS = 60  # candidates are scored on their first 60 tokens (the index keeps replies of <= 30 words)


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_native_bf16() else nullcontext()


@torch.no_grad()
def features(model, tokenizer, contexts: list[list[int]], replies: list[list[list[int]]], amp: bool = False) -> Tensor:
    """Features (N, len(SCALARS)) of every candidate reply (ids, no BOS/EOS) of every context, in order:
    contexts (C lists of ids), replies[c] the candidates of context c. With amp (training the ranker), the
    frozen model runs in bfloat16 where the CPU has it natively; serving runs it in float32, whose peak memory
    in a server of 8 sessions is lower. The features come out float32."""
    model.eval()
    flat = [r[:MAX_REPLY_TOKENS] or [EOS] for group in replies for r in group]
    if not flat:
        return torch.zeros(0, len(SCALARS))
    owner = torch.tensor([i for i, group in enumerate(replies) for _ in group])
    dev = next(model.parameters()).device
    n = len(flat)
    src, src_len = pad([c or EMPTY_CONTEXT for c in contexts] + [EMPTY_CONTEXT])
    # one ranking at a time per process, as sampling takes turns (nlp.cpu_serving.fused_turn): 8 sessions scoring at
    # once each held autocast's weight copies and the output layer's (positions x vocabulary) logits
    with fused_turn(src), (_autocast() if amp else nullcontext()):
        state = model.encode(src.to(dev), src_len)
        rows = torch.cat([owner, torch.full_like(owner, len(contexts))]).to(dev)  # under its context, then none
        both = {k: v.index_select(0, rows) for k, v in state.items()}
        tgt_in, _ = pad([[BOS] + r for r in flat] * 2)
        tgt_out, _ = pad([r + [EOS] for r in flat] * 2)
        tgt_in, tgt_out = tgt_in.to(dev), tgt_out.to(dev)
        logprob = torch.cat([  # a few rows at a time: the decoder's working memory stays small
            _mean_logprob(model, model.decode_features({k: v[i:i + ROWS] for k, v in both.items()},
                                                       tgt_in[i:i + ROWS])[0], tgt_out[i:i + ROWS])
            for i in range(0, len(tgt_in), ROWS)]).float().cpu()
        head = head_scores(model, both["pooled"][:n], flat).float().cpu() if has_head(model) else torch.zeros(n)
    length = torch.log1p(torch.tensor([float(len(r)) for r in flat]))
    return torch.cat([torch.stack([logprob[:n], logprob[n:], head, length], 1),
                      torch.tensor([text_features(tokenizer.decode(r)) for r in flat])], 1)


_TOKENS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")  # words (contractions whole) and punctuation marks


def text_features(text: str) -> list[float]:
    """How often the reply's most repeated content word (alphabetic, not an English stop word) occurs, and its
    share of distinct tokens. A regular expression reads the words: nltk's tokenizer (nlp.metrics.words, what
    the shipped ranker was trained with) would cost the app's server 160 MB of imports; the two agree on
    content words and differ a little on the distinct share (a contraction is one token here, two there)."""
    every = _TOKENS.findall(text.lower())
    content = Counter(w for w in every if w.isalpha() and w not in STOP_WORDS)
    return [float(max(content.values(), default=0)), len(set(every)) / max(len(every), 1)]


def _mean_logprob(model, att: Tensor, tgt_out: Tensor, rows: int = 16) -> Tensor:
    """Teacher-forced mean log-probability a token of each row (the output layer run `rows` positions at a time)."""
    flat, targets = att.reshape(-1, att.shape[-1]), tgt_out.reshape(-1)
    nll = torch.cat([F.cross_entropy(model.out(flat[i:i + rows]).float(), targets[i:i + rows], ignore_index=PAD,
                                     reduction="none") for i in range(0, len(flat), rows)]).view_as(tgt_out)
    return -nll.sum(1) / (tgt_out != PAD).sum(1).clamp(min=1)


class Ranker(nn.Module):
    """Standardised features -> a hidden layer (GELU) -> one score: the model's part of the app's score. The
    app adds overlap_weight times the word overlap (nlp.ranking.Overlap), a weight chosen on validation."""

    def __init__(self, n_features: int, hidden: int = 64, dropout: float = 0.1, overlap_weight: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.overlap_weight = overlap_weight
        self.config = {"n_features": n_features, "hidden": hidden, "dropout": dropout}

    def forward(self, feats: Tensor) -> Tensor:
        return self.net((feats - self.mean) / self.std).squeeze(-1)


def weights_sha(ck: Checkpoint) -> str:
    return ck.config.get("files", {}).get(WEIGHTS) or hashlib.sha256((ck.path / WEIGHTS).read_bytes()).hexdigest()


def save_ranker(ck: Checkpoint, ranker: Ranker, info: dict) -> None:
    save_file({k: v.contiguous() for k, v in ranker.state_dict().items()}, str(ck.path / RANKER_WEIGHTS))
    digest = hashlib.sha256((ck.path / RANKER_WEIGHTS).read_bytes()).hexdigest()
    write_json(ck.path / RANKER_CONFIG, {"model": ranker.config, "overlap_weight": ranker.overlap_weight,
                                         "features": list(SCALARS),
                                         "model_weights": weights_sha(ck), "sha256": digest, **info})


def load_ranker(ck: Checkpoint) -> Ranker | None:
    """The checkpoint's ranker, None when it has none; a damaged one, or one trained on other weights, is a
    CheckpointError that says how to retrain it."""
    cfg_file, weights = ck.path / RANKER_CONFIG, ck.path / RANKER_WEIGHTS
    if not cfg_file.exists() and not weights.exists():
        return None
    retrain = f"retrain it with: python -m nlp train-ranker --checkpoint {ck.path}, or delete {RANKER_CONFIG} " \
              f"and {RANKER_WEIGHTS} to rank by the older score"
    try:
        cfg = json.loads(cfg_file.read_text())
        if hashlib.sha256(weights.read_bytes()).hexdigest() != cfg["sha256"]:
            raise ValueError(f"{RANKER_WEIGHTS} does not match its sha256")
        if cfg["model_weights"] != weights_sha(ck):
            raise ValueError("it was trained on other weights of the chat model")
        ranker = Ranker(**cfg["model"], overlap_weight=float(cfg.get("overlap_weight", 0.0)))
        ranker.load_state_dict(load_file(str(weights)))
        if not math.isfinite(ranker.overlap_weight):
            raise ValueError("its overlap_weight is not a number")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{ck.path}: its ranker cannot be used ({e}); {retrain}") from None
    if ranker.config["n_features"] != len(SCALARS):
        raise CheckpointError(f"{ck.path}: its ranker reads {ranker.config['n_features']} features, not the "
                              f"{len(SCALARS)} of this version; {retrain}")
    return ranker.eval()
