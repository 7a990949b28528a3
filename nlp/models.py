"""The three models: LanguageModel, Seq2Seq (encoder-decoder with attention), SentimentClassifier.

Each is built from a plain config dataclass (`Model.from_config(dict)`), runs on the fused `nn.LSTM`/`nn.GRU`
by default and on the cells of `nlp.cells` with `impl="cells"` (same parameter names, so one checkpoint
serves both). Batches are batch-first: ids (B, T). The decoding interface shared by the LM and the
decoder is `start(...) -> state` and `step(tokens (B,), state) -> (log_probs (B, V), state)`, where a state
is a dict of tensors with the batch in dim 0 (so beam search can reorder it without knowing the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlp.attention import Attention
from nlp.cells import step_stack
from nlp.cpu_serving import weights_not_drawn
from nlp.errors import ConfigError
from nlp.rnn import (
    MODES,
    FromConfig,
    init_rnn,
    make_rnn,
    masked_max,
    mean_logprob,
    run_bidirectional_unpacked,
    run_rnn,
    state_from_batch_first,
    state_to_batch_first,
    token_nll,
)
from nlp.tokenizer import PAD


# --------------------------------------------------------------------------- language model
@dataclass
class LMConfig:
    vocab_size: int = 8000
    emb_dim: int = 400            # token embedding size (= hidden_size when weights are tied)
    hidden_size: int = 400        # per layer
    num_layers: int = 2
    rnn_type: str = "lstm"        # lstm | gru
    dropout: float = 0.3          # on embeddings, between layers and before the output layer
    tie_weights: bool = True      # output layer shares the embedding matrix (Press & Wolf 2017)
    adaptive_cutoffs: list[int] = field(default_factory=list)  # e.g. [2000, 6000]: adaptive softmax
    impl: str = "fused"           # fused (cuDNN / MKL-DNN) | cells (the equations in nlp/cells.py)


class LanguageModel(nn.Module, FromConfig):
    Config, task = LMConfig, "lm"
    former_names = {"decoder.": "out."}  # the output layer's name in checkpoints saved before 2026-12-08

    def __init__(self, config: LMConfig):
        super().__init__()
        c = self.config = config
        if c.tie_weights and c.emb_dim != c.hidden_size:
            raise ConfigError(f"tied weights need emb_dim == hidden_size, got {c.emb_dim} and {c.hidden_size}")
        if c.tie_weights and c.adaptive_cutoffs:
            raise ConfigError("tie_weights and adaptive_cutoffs cannot be combined; choose one")
        self.embed = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=PAD)
        self.drop = nn.Dropout(c.dropout)
        self.rnn = make_rnn(c.rnn_type, c.impl, c.emb_dim, c.hidden_size, c.num_layers, c.dropout)
        init_rnn(self.rnn)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if c.adaptive_cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(c.hidden_size, c.vocab_size, list(c.adaptive_cutoffs),
                                                          div_value=4.0)
        else:
            self.out = nn.Linear(c.hidden_size, c.vocab_size)  # the output layer, as in Seq2Seq
            nn.init.zeros_(self.out.bias)
            if c.tie_weights:
                self.out.weight = self.embed.weight

    def forward(self, ids: Tensor, state=None) -> tuple[Tensor, object]:
        """ids (B, T) -> hidden (B, T, H) and the recurrent state to carry to the next window."""
        out, state = run_rnn(self.rnn, self.drop(self.embed(ids)), hx=state)
        return self.drop(out), state

    def loss(self, ids: Tensor, targets: Tensor, state=None, label_smoothing: float = 0.0):
        """Summed cross-entropy over targets that are not PAD: (loss_sum, n_tokens, state)."""
        hidden, state = self(ids, state)
        return (*self.loss_from_hidden(hidden, targets, label_smoothing), state)

    def loss_from_hidden(self, hidden: Tensor, targets: Tensor, label_smoothing: float = 0.0):
        """The loss half of `loss`: the trainer calls it on the output of a DDP-wrapped forward."""
        if hasattr(self, "adaptive"):  # no label smoothing or ignore_index in the adaptive softmax
            h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
            keep = t != PAD
            # float32 outside autocast: the adaptive softmax mixes dtypes in index_copy_ under it (torch 2.13)
            with torch.autocast(h.device.type, enabled=False):
                return self.adaptive(h[keep].float(), t[keep]).loss * keep.sum(), keep.sum()
        return token_nll(self.out(hidden), targets, label_smoothing)

    def log_probs(self, h: Tensor) -> Tensor:
        """h (..., H) -> log-probabilities (..., V)."""
        if hasattr(self, "adaptive"):
            return self.adaptive.log_prob(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], -1)
        half = getattr(self.out, "step_weight", None)  # half_step_weights
        if half is not None:
            return F.log_softmax(F.linear(h.to(half.dtype), half).float() + self.out.bias, -1)
        return F.log_softmax(self.out(h).float(), -1)

    # decoding interface ------------------------------------------------------
    def start(self, prompt: Tensor) -> tuple[Tensor, dict]:
        """Encode the prompt (B, T) in one fused call: log-probs for the next token and the state."""
        hidden, state = self(prompt)
        return self.log_probs(hidden[:, -1]), state_to_batch_first(state)

    def step(self, tokens: Tensor, state: dict) -> tuple[Tensor, dict]:
        rnn_state = state_from_batch_first(state)
        h, rnn_state = step_stack(self.rnn, MODES[self.config.rnn_type], self.embed(tokens), rnn_state)
        return self.log_probs(h), state_to_batch_first(rnn_state)


# --------------------------------------------------------------------------- encoder-decoder
@dataclass
class Seq2SeqConfig:
    vocab_size: int = 8000
    emb_dim: int = 256            # embeddings, shared by encoder and decoder; also the attentional vector
    enc_hidden: int = 256         # per direction: the encoder is a bidirectional LSTM
    enc_layers: int = 2
    dec_hidden: int = 512
    dec_layers: int = 2
    attention: str = "general"    # dot | general | concat | additive (Bahdanau)
    input_feeding: bool = False   # feed the last attentional vector into the next step (steps in Python)
    dropout: float = 0.2
    tie_weights: bool = True      # output layer shares the embedding matrix
    impl: str = "fused"           # fused | cells
    bridge: str = "final"         # final: decoder starts from the encoder's final states (run packed) |
                                  # pool: from the max-pool of the encoder outputs (run unpacked, 1.9x faster)
    rank_dim: int = 0             # > 0: a next-reply head scores (context, reply) pairs in this many dims


class Seq2Seq(nn.Module, FromConfig):
    """Bidirectional LSTM encoder -> bridge -> LSTM decoder with attention over the encoder states.

    Default (Luong, no input feeding): the decoder runs over the whole target in one fused call and attends
    from all its states at once, so training stays on cuDNN / MKL-DNN. With input feeding the attentional
    vector of step t-1 joins the input of step t, which forces a step-by-step loop.
    """
    Config, task = Seq2SeqConfig, "chat"

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        c = self.config = config
        if c.bridge not in ("final", "pool"):
            raise ConfigError(f"bridge must be 'final' or 'pool', got {c.bridge!r}")
        if c.attention == "dot" and c.dec_hidden != 2 * c.enc_hidden:
            raise ConfigError(f"dot attention needs dec_hidden == 2 * enc_hidden ({c.dec_hidden} vs "
                              f"{2 * c.enc_hidden}); use 'general' otherwise")
        self.embed = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=PAD)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = make_rnn("lstm", c.impl, c.emb_dim, c.enc_hidden, c.enc_layers, c.dropout, bidirectional=True)
        dec_in = c.emb_dim * (2 if c.input_feeding else 1)
        self.decoder = make_rnn("lstm", c.impl, dec_in, c.dec_hidden, c.dec_layers, c.dropout)
        init_rnn(self.encoder)
        init_rnn(self.decoder)
        self.bridge_h = nn.Linear(2 * c.enc_hidden, c.dec_hidden)
        self.bridge_c = nn.Linear(2 * c.enc_hidden, c.dec_hidden)
        self.attn = Attention(c.attention, c.dec_hidden, 2 * c.enc_hidden)
        self.combine = nn.Linear(c.dec_hidden + 2 * c.enc_hidden, c.emb_dim)  # attentional vector
        self.out = nn.Linear(c.emb_dim, c.vocab_size)
        nn.init.zeros_(self.out.bias)
        if c.tie_weights:
            self.out.weight = self.embed.weight
        if c.rank_dim:
            # next-reply head (a dual encoder over the shared BiLSTM): score(context, reply) = s * cos(Wc x, Wr y)
            self.rank_context = nn.Linear(2 * c.enc_hidden, c.rank_dim)
            self.rank_reply = nn.Linear(2 * c.enc_hidden, c.rank_dim)
            self.rank_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # learned inverse temperature (CLIP)

    @torch.no_grad()
    def pass_decoder_through(self) -> None:
        """Make the attentional layer start as tanh(decoder state), ignoring the attention context: after the
        decoder and the output layer were copied from a language model (init_from), the model then starts
        out predicting replies as that LM would, and learns to use the context from there."""
        c = self.config
        if c.dec_hidden != c.emb_dim:
            return
        self.combine.weight.zero_()
        self.combine.weight[:, : c.dec_hidden].copy_(torch.eye(c.dec_hidden))
        self.combine.bias.zero_()

    def run_encoder(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, object]:
        """ids (B, S) -> outputs (B, S, 2He), mask (B, S), final states (None under bridge = "pool")."""
        mask = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.to(ids.device).unsqueeze(1)
        x = self.drop(self.embed(ids))
        if self.config.bridge == "pool" and isinstance(self.encoder, nn.LSTM):
            return run_bidirectional_unpacked(self.encoder, x, lengths), mask, None
        out, finals = run_rnn(self.encoder, x, lengths)
        return out, mask, finals

    def encode(self, src: Tensor, src_len: Tensor) -> dict[str, Tensor]:
        """src (B, S) -> the decoder's starting state: memory (B, S, 2He), mask, bridged h and c (B, L, Hd),
        and the pooled context (B, 2He)."""
        c = self.config
        memory, mask, finals = self.run_encoder(src, src_len)
        B = src.shape[0]
        pooled = masked_max(memory, mask)

        def bridge(x: Tensor | None, layer: nn.Linear) -> Tensor:
            if x is None:                                           # bridge = "pool"
                return torch.tanh(layer(pooled)).unsqueeze(1).expand(-1, c.dec_layers, -1)
            x = x.view(c.enc_layers, 2, B, c.enc_hidden)           # (layers, directions, B, He)
            x = torch.cat([x[:, 0], x[:, 1]], -1)                   # (layers, B, 2He)
            x = x[-c.dec_layers:] if c.enc_layers >= c.dec_layers else x[-1:].expand(c.dec_layers, -1, -1)
            return torch.tanh(layer(x)).transpose(0, 1)             # (B, Ld, Hd)

        h, cell = finals if finals is not None else (None, None)
        state = {"memory": memory, "mask": mask, "h": bridge(h, self.bridge_h), "c": bridge(cell, self.bridge_c),
                 "pooled": pooled}
        if c.input_feeding:
            state["feed"] = memory.new_zeros(B, c.emb_dim)
        return state

    # next-reply head ------------------------------------------------------------
    def context_vectors(self, pooled: Tensor) -> Tensor:
        """Pooled contexts (B, 2He) -> unit vectors (B, R) for the next-reply head."""
        return F.normalize(self.rank_context(pooled).float(), dim=-1)

    def reply_vectors(self, reply: Tensor, reply_len: Tensor) -> Tensor:
        """Replies (N, T) without BOS/EOS -> unit vectors (N, R), read by the same encoder as the context."""
        out, mask, _ = self.run_encoder(reply, reply_len)
        return F.normalize(self.rank_reply(masked_max(out, mask)).float(), dim=-1)

    def head_scale(self) -> Tensor:
        return self.rank_scale.float().clamp(max=math.log(100.0)).exp()

    def rank_logits(self, ctx: Tensor, rep: Tensor) -> Tensor:
        """(B, R) x (N, R) -> (B, N) scores: the learned scale times the cosine."""
        return self.head_scale() * ctx @ rep.t()

    def _attend(self, dec_out: Tensor, state: dict) -> tuple[Tensor, Tensor]:
        context, weights = self.attn(dec_out, state["memory"], state["mask"])
        return torch.tanh(self.combine(torch.cat([dec_out, context], -1))), weights

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, reply: Tensor | None = None,
                reply_len: Tensor | None = None, swap_contexts: bool = False):
        """Teacher forcing: tgt_in (B, T) starts with BOS. Returns logits (B, T, V) and attention (B, T, S);
        given the replies (B, T') too (training the next-reply head), also the (B, B) scores of every context
        against every reply of the batch. With swap_contexts, logits and attention have 2B rows: after the B
        rows under their own contexts, each reply again under the previous row's context (row i under context
        i - 1, encoded once), for the context gain and the context-contrast loss."""
        state = self.encode(src, src_len)
        if swap_contexts:
            state_in = {k: torch.cat([v, v.roll(1, 0)]) for k, v in state.items()}
            logits, weights = self.decode(state_in, torch.cat([tgt_in, tgt_in]))
        else:
            logits, weights = self.decode(state, tgt_in)
        if reply is None:
            return logits, weights
        return logits, weights, self.rank_logits(self.context_vectors(state["pooled"]),
                                                 self.reply_vectors(reply, reply_len))

    def decode(self, state: dict, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoder from an encoded state: logits (B, T, V) and attention (B, T, S)."""
        att, weights = self.decode_features(state, tgt_in)
        return self.out(att), weights

    def decode_features(self, state: dict, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """`decode` up to the output layer: the attentional vectors (B, T, D), dropout applied, and attention."""
        emb = self.drop(self.embed(tgt_in))
        if not self.config.input_feeding:
            dec_out, _ = run_rnn(self.decoder, emb, hx=state_from_batch_first(state))
            att, weights = self._attend(dec_out, state)
            return self.drop(att), weights
        atts, ws = [], []
        for t in range(tgt_in.shape[1]):
            att, w, state = self._feed_step(emb[:, t], state)
            atts.append(att)
            ws.append(w)
        return self.drop(torch.stack(atts, 1)), torch.stack(ws, 1)

    def reply_logprob(self, state: dict, tgt_in: Tensor, tgt_out: Tensor, rows: int = 256) -> Tensor:
        """Teacher-forced mean log-probability of each row's targets that are not PAD (`row_mean_logprob` of
        `decode`'s logits), with the output layer and its softmax run over `rows` positions at a time: scoring
        16 sampled replies of 40 tokens held three (B, T, V) float32 tensors (20 MB each) at once, for a
        ranking that needs one number a reply."""
        att, _ = self.decode_features(state, tgt_in)
        flat, targets = att.reshape(-1, att.shape[-1]), tgt_out.reshape(-1)
        nll = torch.cat([F.cross_entropy(self.out(flat[i:i + rows]).float(), targets[i:i + rows], ignore_index=PAD,
                                         reduction="none") for i in range(0, len(flat), rows)])
        return mean_logprob(nll.view_as(tgt_out), tgt_out)

    def _feed_step(self, emb_t: Tensor, state: dict):
        x = torch.cat([emb_t, state["feed"]], -1) if self.config.input_feeding else emb_t
        h, (hs, cs) = step_stack(self.decoder, "LSTM", x, state_from_batch_first(state))
        if self.training and self.config.dropout:  # the fused module's inter-layer dropout is off when stepping
            h = self.drop(h)
        att, w = self._attend(h, state)
        state = {**state, **state_to_batch_first((hs, cs))}
        if self.config.input_feeding:
            state["feed"] = att
        return att, w, state

    def loss(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, tgt_out: Tensor, label_smoothing: float = 0.0):
        """Teacher-forced summed cross-entropy of the reply tokens: (loss_sum, n_tokens)."""
        return token_nll(self(src, src_len, tgt_in)[0], tgt_out, label_smoothing)

    # decoding interface ------------------------------------------------------
    def start(self, src: Tensor, src_len: Tensor | None = None) -> dict:
        if src_len is None:
            src_len = torch.full((src.shape[0],), src.shape[1], dtype=torch.long)
        return self.encode(src, src_len)

    def step(self, tokens: Tensor, state: dict) -> tuple[Tensor, dict]:
        att, w, state = self._feed_step(self.embed(tokens), state)
        state["attn"] = w  # (B, S): where this step looked, for the attention map
        return F.log_softmax(self.out(att).float(), -1), state


# --------------------------------------------------------------------------- sentiment
@dataclass
class SentimentConfig:
    vocab_size: int = 8000
    emb_dim: int = 256
    hidden_size: int = 256        # per direction
    num_layers: int = 2
    dropout: float = 0.3
    attn_dim: int = 128           # size of the attention-pooling scorer
    num_classes: int = 2
    regression: bool = True       # a second head predicts the continuous rating
    impl: str = "fused"


class SentimentClassifier(nn.Module, FromConfig):
    """Embedding -> BiLSTM -> attention pooling -> class logits and a rating.

    Attention pooling: a learned query scores every token state (additive attention), the softmax of the
    scores weights the states into one vector; the weights are returned so the app can shade each token.
    """
    Config, task = SentimentConfig, "sentiment"

    def __init__(self, config: SentimentConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=PAD)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = make_rnn("lstm", c.impl, c.emb_dim, c.hidden_size, c.num_layers, c.dropout, bidirectional=True)
        init_rnn(self.encoder)
        self.query = nn.Parameter(torch.zeros(1, 1, c.attn_dim))
        self.attn = Attention("additive", c.attn_dim, 2 * c.hidden_size, c.attn_dim)
        self.classify = nn.Linear(2 * c.hidden_size, c.num_classes)
        self.rate = nn.Linear(2 * c.hidden_size, 1) if c.regression else None

    def forward(self, ids: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        out, _ = run_rnn(self.encoder, self.drop(self.embed(ids)), lengths)
        mask = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.to(ids.device).unsqueeze(1)
        pooled, weights = self.attn(self.query.expand(ids.shape[0], -1, -1), out, mask)
        pooled = self.drop(pooled.squeeze(1))
        result = {"logits": self.classify(pooled), "attention": weights.squeeze(1)}
        if self.rate is not None:
            result["rating"] = self.rate(pooled).squeeze(-1)
        return result


MODELS = {m.task: m for m in (LanguageModel, Seq2Seq, SentimentClassifier)}


def build_model(task: str, cfg: dict, draw_weights: bool = True) -> nn.Module:
    """The task's model from its config dict; `draw_weights=False` (weights loaded next) skips the random
    initialisation (`weights_not_drawn`)."""
    if task not in MODELS:
        raise ConfigError(f"unknown task {task!r}: use one of {list(MODELS)}")
    if draw_weights:
        return MODELS[task].from_config(cfg)
    with weights_not_drawn():
        return MODELS[task].from_config(cfg)
