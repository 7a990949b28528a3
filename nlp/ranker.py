"""The chat's learned ranker: which candidate reply fits this conversation, human or written by the decoder.

    features(model, tokenizer, context_ids, replies)  ->  (N, len(SCALARS)) for N candidate replies
    score = Ranker(features)                          ->  (N,) higher is better (reading the features it was trained on)

The features come from the chat model itself, frozen: how likely the decoder finds the reply after this
context (mean log-probability a token) and after no context (the prior of Li et al. 2016's mutual-information
score), the next-reply head's score, and the reply's length; and two counts read off the reply's text: how
often its most repeated content word occurs, and its share of distinct words (the decoder's failing is to
repeat the topic word: "I work at work and working on the work ..."); and the soft match of reply and context
under the model's own input embeddings, both ways (soft_match: a reply about "puppy" answers a message about
"dog", which no word count sees). A small MLP scores them. (The decoder's attentional vectors as further
features fitted the training rows better and the validation rows worse.)

It is trained against the candidates it meets on the app's default path (nlp.train_ranker): for each sampled
training row, its own reply beside the replies that the reply index (nlp.retrieval) finds for the most similar
training contexts and two random replies (optionally also replies the decoder samples for the row's context).
The replies of similar contexts share the topic, so the ranker must learn which one answers *this* message
(random distractors, the next-reply head's training, only teach the topic). The number of epochs is chosen on
validation rows by Hits@1 among the same kinds of candidates.

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
from nlp.ranking import EMPTY_CONTEXT, Overlap, has_head, head_scores
from nlp.runtime import cpu_has_native_bf16
from nlp.tokenizer import BOS, EOS, PAD

RANKER_WEIGHTS, RANKER_CONFIG = "ranker.safetensors", "ranker.json"
OVERLAP_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # tried beside the ranker; its scores span a few units
SCALARS = ("loglik", "prior", "head", "log_length", "top_word_repeats", "distinct_words",
           "soft_reply_to_context", "soft_context_to_reply")
ROWS = 24  # candidate rows decoded at once when scoring (a server scores one reply at a time: fused_turn)
BATCH_OUTPUT_ROWS = 1024  # positions through the output layer at once in training and evaluation (~33 MB of logits)
MAX_REPLY_TOKENS = 60  # candidates are scored on their first 60 tokens (the index keeps replies of <= 30 words)


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_native_bf16() else nullcontext()


@torch.no_grad()
def features(model, tokenizer, contexts: list[list[int]], replies: list[list[list[int]]], amp: bool = False,
             output_rows: int = 128) -> Tensor:
    """Features (N, len(SCALARS)) of every candidate reply (ids, no BOS/EOS) of every context, in order:
    contexts (C lists of ids), replies[c] the candidates of context c. With amp (training the ranker), the
    frozen model runs in bfloat16 where the CPU has it natively; serving runs it in float32, whose peak memory
    in a server of 8 sessions is lower. The output layer runs `output_rows` positions at a time (its logits are
    positions x vocabulary: small in a server, larger in a batch evaluation). The features come out float32."""
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
                                                       tgt_in[i:i + ROWS])[0], tgt_out[i:i + ROWS], output_rows)
            for i in range(0, len(tgt_in), ROWS)]).float().cpu()
        head = head_scores(model, both["pooled"][:n], flat).float().cpu() if has_head(model) else torch.zeros(n)
    length = torch.log1p(torch.tensor([float(len(r)) for r in flat]))
    return torch.cat([torch.stack([logprob[:n], logprob[n:], head, length], 1),
                      torch.tensor([text_features(tokenizer.decode(r)) for r in flat]),
                      soft_match(model.embed.weight, Overlap.of(tokenizer), contexts, replies)], 1)


@torch.no_grad()
def soft_match(embedding: Tensor, overlap: Overlap, contexts: list[list[int]], replies: list[list[list[int]]]) \
        -> Tensor:
    """(N, 2) for every reply of every context: how well the reply's pieces find a counterpart in the context
    (the mean over the reply's pieces of the best cosine to any context piece, under the model's input
    embeddings), and the same from the context's side; both means weighted by the pieces' information, as the
    word overlap weighs them, so "the" or "I" count little. An exact shared piece scores 1, a related one
    ("puppy" beside "dog") more than an unrelated one. 0 where either side has no weighted piece."""
    weight = overlap.weights
    out = []
    for ctx, group in zip(contexts, replies, strict=True):
        c = [t for t in ctx if weight[t] > 0]
        kept = [[t for t in r[:MAX_REPLY_TOKENS] if weight[t] > 0] for r in group]
        if not c or not any(kept):
            out.append(torch.zeros(len(group), 2))
            continue
        c_emb = F.normalize(embedding[c].float(), dim=1)
        r_ids = [t for r in kept for t in r]
        sim = F.normalize(embedding[r_ids].float(), dim=1) @ c_emb.T  # (reply pieces of the group, context pieces)
        wc, rows = weight[c], []
        for s, r in zip(sim.split([len(r) for r in kept]), kept):
            if not r:
                rows.append(torch.zeros(2))
                continue
            wr = weight[r]
            rows.append(torch.stack([(s.max(1).values * wr).sum() / wr.sum(), (s.max(0).values * wc).sum() / wc.sum()]))
        out.append(torch.stack(rows))
    return torch.cat(out) if out else torch.zeros(0, 2)


_TOKENS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")  # words (contractions whole) and punctuation marks


def text_features(text: str) -> list[float]:
    """How often the reply's most repeated content word (alphabetic, not an English stop word) occurs, and its
    share of distinct tokens. A regular expression reads the words: nltk's tokenizer (nlp.metrics.words, what
    the shipped ranker was trained with) would cost the app's server 160 MB of imports; the two agree on
    content words and differ a little on the distinct share (a contraction is one token here, two there)."""
    every = _TOKENS.findall(text.lower())
    content = Counter(w for w in every if w.isalpha() and w not in STOP_WORDS)
    return [float(max(content.values(), default=0)), len(set(every)) / max(len(every), 1)]


def _mean_logprob(model, att: Tensor, tgt_out: Tensor, rows: int) -> Tensor:
    """Teacher-forced mean log-probability a token of each row. Only the real (not padding) positions go through
    the output layer, `rows` positions at a time: a group's rows are padded to its longest reply, and the
    padding was a third of the positions or more."""
    flat, targets = att.reshape(-1, att.shape[-1]), tgt_out.reshape(-1)
    real = (targets != PAD).nonzero().squeeze(1)
    flat, targets = flat.index_select(0, real), targets.index_select(0, real)
    nll = torch.cat([F.cross_entropy(model.out(flat[i:i + rows]).float(), targets[i:i + rows], reduction="none")
                     for i in range(0, len(flat), rows)]) if len(real) else torch.zeros(0, device=att.device)
    total = torch.zeros(tgt_out.numel(), device=att.device).index_add_(0, real, nll).view_as(tgt_out)
    return -total.sum(1) / (tgt_out != PAD).sum(1).clamp(min=1)


class Ranker(nn.Module):
    """Standardised features -> a hidden layer (GELU) -> one score: the model's part of the app's score. The
    app adds overlap_weight times the word overlap (nlp.ranking.Overlap), a weight chosen on validation.
    It reads the named features (a subset of SCALARS, in SCALARS' order) from the full matrix that
    `features` returns, so a ranker trained on fewer features than this version computes still serves."""

    def __init__(self, features: tuple[str, ...] | list[str] = SCALARS, hidden: int = 64, dropout: float = 0.1,
                 overlap_weight: float = 0.0):
        super().__init__()
        unknown = [f for f in features if f not in SCALARS]
        if unknown or not features:
            raise ValueError(f"features {unknown or '(none)'} are not among {', '.join(SCALARS)}")
        self.features = tuple(features)
        self.register_buffer("columns", torch.tensor([SCALARS.index(f) for f in self.features]), persistent=False)
        n = len(self.features)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.overlap_weight = overlap_weight
        self.config = {"features": list(self.features), "hidden": hidden, "dropout": dropout}

    def pick(self, feats: Tensor) -> Tensor:
        """The columns this ranker reads, from a (..., len(SCALARS)) feature matrix."""
        return feats.index_select(-1, self.columns)

    def forward(self, feats: Tensor) -> Tensor:
        return self.net((self.pick(feats) - self.mean) / self.std).squeeze(-1)


def weights_sha(ck: Checkpoint) -> str:
    return ck.config.get("files", {}).get(WEIGHTS) or hashlib.sha256((ck.path / WEIGHTS).read_bytes()).hexdigest()


def save_ranker(ck: Checkpoint, ranker: Ranker, info: dict) -> None:
    save_file({k: v.contiguous() for k, v in ranker.state_dict().items()}, str(ck.path / RANKER_WEIGHTS))
    digest = hashlib.sha256((ck.path / RANKER_WEIGHTS).read_bytes()).hexdigest()
    write_json(ck.path / RANKER_CONFIG, {"model": ranker.config, "overlap_weight": ranker.overlap_weight,
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
        model = dict(cfg["model"])
        if "features" not in model:  # rankers saved before the names moved into "model" list them beside it
            n = model.pop("n_features")
            model["features"] = cfg.get("features", SCALARS[:n])
        ranker = Ranker(**model, overlap_weight=float(cfg.get("overlap_weight", 0.0)))
        ranker.load_state_dict(load_file(str(weights)))
        if not math.isfinite(ranker.overlap_weight):
            raise ValueError("its overlap_weight is not a number")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{ck.path}: its ranker cannot be used ({e}); {retrain}") from None
    return ranker.eval()
