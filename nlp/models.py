"""The three models: LanguageModel, Seq2Seq (encoder-decoder with attention), SentimentClassifier.

Each is built from a plain config dataclass (`Model.from_config(dict)`), runs on the fused `nn.LSTM`/`nn.GRU`
by default and on the cells of `nlp.cells` with `impl="cells"` (same parameter names, so one checkpoint
serves both). Batches are batch-first: ids (B, T). The decoding interface shared by the LM and the
decoder is `start(...) -> state` and `step(tokens (B,), state) -> (log_probs (B, V), state)`, where a state
is a dict of tensors with the batch in dim 0 (so beam search can reorder it without knowing the model).
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nlp.attention import Attention
from nlp.cells import Recurrent, step_stack
from nlp.errors import ConfigError
from nlp.tokenizer import PAD

FUSED = {"lstm": nn.LSTM, "gru": nn.GRU}
MODES = {"lstm": "LSTM", "gru": "GRU"}


# --------------------------------------------------------------------------- shared pieces
def make_rnn(rnn_type: str, impl: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
             bidirectional: bool = False) -> nn.Module:
    if rnn_type not in FUSED:
        raise ConfigError(f"rnn_type must be 'lstm' or 'gru', got {rnn_type!r}")
    if impl not in ("fused", "cells"):
        raise ConfigError(f"impl must be 'fused' or 'cells', got {impl!r}")
    dropout = dropout if num_layers > 1 else 0.0
    if impl == "cells":
        return Recurrent(MODES[rnn_type], input_size, hidden_size, num_layers, batch_first=True, dropout=dropout,
                         bidirectional=bidirectional)
    return FUSED[rnn_type](input_size, hidden_size, num_layers, batch_first=True, dropout=dropout,
                           bidirectional=bidirectional)


def init_rnn(rnn: nn.Module) -> None:
    """Orthogonal recurrent weights (per gate), Xavier input weights, zero biases, LSTM forget-gate bias 1.

    Orthogonal W_hh keeps the singular values of the recurrent Jacobian near 1 at the start, so gradients
    neither vanish nor explode over long spans; a forget bias of 1 starts the LSTM remembering.
    """
    is_lstm = isinstance(rnn, nn.LSTM) or getattr(rnn, "mode", "") == "LSTM"
    H = rnn.hidden_size
    for name, p in rnn.named_parameters():
        if name.startswith("weight_hh"):
            for chunk in p.data.split(H, 0):
                nn.init.orthogonal_(chunk)
        elif name.startswith("weight_ih"):
            for chunk in p.data.split(H, 0):
                nn.init.xavier_uniform_(chunk)
        elif name.startswith("bias"):
            nn.init.zeros_(p)
            if is_lstm and name.startswith("bias_ih"):
                p.data[H:2 * H] = 1.0  # gates are (i, f, g, o): the second block is the forget gate


_FUSED_CPU_INFERENCE = threading.RLock()  # re-entrant: sample-and-rank holds it around its own fused calls


@contextmanager
def fused_turn(x: Tensor):
    """Inference calls of the fused RNN on the CPU take turns, one at a time per process.

    oneDNN, which runs the fused LSTM on the CPU, copies each layer's weights into its own layout on every call
    (8 MB a layer for the shipped LM) and frees the copy after. In the app every session runs in a thread of
    one process: 8 sessions pressing Generate at once held 8 copies, +70 MB of peak memory for nothing, since
    each call already spreads over every core with torch's intra-op threads. Training (gradients on) and
    other devices never wait. Sample-and-rank takes one turn for a whole reply (its sampling steps and scoring
    passes), so sessions' rankings do not interleave. (What 8 ranking sessions held at once was mostly MKL's
    per-thread buffers: webapp.__main__.lean_memory frees those.)
    """
    if torch.is_grad_enabled() or x.device.type != "cpu":
        yield
        return
    with _FUSED_CPU_INFERENCE:
        yield


def run_rnn(rnn: nn.Module, x: Tensor, lengths: Tensor | None = None, hx=None):
    """Run a batch-first stack on a padded batch, whether it is fused (packed) or built from cells."""
    if isinstance(rnn, Recurrent):
        return rnn(x, hx, lengths=lengths)
    if lengths is None:
        with fused_turn(x):
            return rnn(x, hx)
    packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
    with fused_turn(x):
        out, state = rnn(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, state


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """(B, T) positions that reverse each row's first lengths[b] entries and leave its padding in place."""
    t = torch.arange(T, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(t < n, n - 1 - t, t)


def run_bidirectional_unpacked(rnn: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
    """Outputs (B, T, 2H) of a bidirectional fused LSTM on a right-padded batch, exact at every real position,
    without packing (which costs a BiLSTM 1.9x on CPU: bench/packing.py).

    The forward direction reads each row from its start, so the padding after its end cannot reach a real
    position. The backward direction runs forward over each row reversed within its length (padding still at
    the end) and is turned back. Each direction of each layer is one fused call on that direction's own
    weights, so the parameters are those of `rnn`. Final states are not returned: past a row's end they have
    read padding (models that need them use `run_rnn`).
    """
    B, T, _ = x.shape
    lengths = lengths.to(x.device).clamp(min=1)
    rev = reverse_index(lengths, T).unsqueeze(-1)                       # (B, T, 1)
    inp = x
    with fused_turn(x):
        for layer in range(rnn.num_layers):
            outs = []
            for sfx in ("", "_reverse"):
                params = [getattr(rnn, f"{n}_l{layer}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                xin = inp if not sfx else inp.gather(1, rev.expand(-1, -1, inp.shape[-1]))
                h0 = inp.new_zeros(1, B, rnn.hidden_size)
                out, _, _ = torch.lstm(xin, (h0, h0), params, True, 1, 0.0, rnn.training, False, True)
                outs.append(out if not sfx else out.gather(1, rev.expand(-1, -1, out.shape[-1])))
            inp = torch.cat(outs, -1)
            if rnn.dropout and rnn.training and layer < rnn.num_layers - 1:
                inp = F.dropout(inp, rnn.dropout, True)
    return inp


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """x (B, T, D), mask (B, T) True at real positions -> the max over real positions (B, D)."""
    return x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).max(1).values


def token_nll(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over the targets that are not PAD, and how many there were."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD,
                           reduction="sum", label_smoothing=label_smoothing)
    return loss, (targets != PAD).sum()


def row_mean_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """(B, T, V) logits, (B, T) targets -> each row's mean log-probability of its targets that are not PAD."""
    return mean_logprob(F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=PAD,
                                        reduction="none"), targets)


def mean_logprob(nll: Tensor, targets: Tensor) -> Tensor:
    """(B, T) per-token NLL (0 at PAD) -> each row's mean log-probability of its targets that are not PAD."""
    return -nll.sum(1) / (targets != PAD).sum(1).clamp(min=1)


def state_to_batch_first(state) -> dict[str, Tensor]:
    if isinstance(state, tuple):
        return {"h": state[0].transpose(0, 1), "c": state[1].transpose(0, 1)}
    return {"h": state.transpose(0, 1)}


def state_from_batch_first(d: dict[str, Tensor]):
    h = d["h"].transpose(0, 1).contiguous()
    return (h, d["c"].transpose(0, 1).contiguous()) if "c" in d else h


class _FromConfig:
    Config: type
    task: str

    @classmethod
    def from_config(cls, cfg: dict):
        known = {f.name for f in fields(cls.Config)}
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
        return cls(cls.Config(**cfg))

    def config_dict(self) -> dict:
        return asdict(self.config)


def transposed_weights(model: nn.Module) -> nn.Module:
    """Store the weights a batch-1 step multiplies as transposes of contiguous (in, out) tensors: same shapes
    and values, another memory order, for inference. At batch 1 a step multiplies one vector by each weight,
    which BLAS streams 2-3x faster in this order (bench/decode_speed.py). That is each nn.Linear (the output
    layer above all, vocabulary x width; tied embeddings share its storage and read the same values) and each
    unidirectional RNN stack, which `step_stack` runs token by token (bidirectional encoders only ever run
    fused). The fused call then works on a contiguous copy of a stack's weights, made per call: a prompt's one
    pass pays it, each later token gains. No memory kept beyond that."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()
        elif isinstance(module, nn.RNNBase) and not module.bidirectional:
            for name, p in module.named_parameters():
                if name.startswith("weight_"):
                    p.data = p.data.t().contiguous().t()
    return model


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): there half-size weights make a batch-1
    step faster; elsewhere bfloat16 products are emulated and slower than float32."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                     "_is_amx_tile_supported"))


def half_step_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """For token-by-token decoding: each unidirectional fused LSTM stack keeps its layers packed as one
    [W_ih | W_hh] matrix in `dtype` with the summed bias (`step_weights`, read by nlp.cells.step_stack), and a
    language model's output layer a `dtype` copy of its weight (`step_weight`, read by `log_probs`). A step then
    reads half the bytes, in one matrix-vector product a layer instead of two; states, gates and log-probs stay
    float32. The float32 weights stay for prompts (one fused pass) and everything else. Inference only: the
    copies do not follow later changes to the weights. bench/decode_speed.py measures the speed and what it
    does to the log-probabilities."""
    for module in model.modules():
        if isinstance(module, nn.LSTM) and not module.bidirectional and not module.proj_size:
            module.step_weights = [
                (torch.cat([getattr(module, f"weight_ih_l{k}"), getattr(module, f"weight_hh_l{k}")], 1)
                 .detach().to(dtype).contiguous(),
                 (getattr(module, f"bias_ih_l{k}") + getattr(module, f"bias_hh_l{k}")).detach().float())
                for k in range(module.num_layers)]
    if isinstance(model, LanguageModel) and not hasattr(model, "adaptive"):
        model.decoder.step_weight = model.decoder.weight.detach().to(dtype).contiguous()
    return model


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


class LanguageModel(nn.Module, _FromConfig):
    Config, task = LMConfig, "lm"

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
            self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
            nn.init.zeros_(self.decoder.bias)
            if c.tie_weights:
                self.decoder.weight = self.embed.weight

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
        return token_nll(self.decoder(hidden), targets, label_smoothing)

    def log_probs(self, h: Tensor) -> Tensor:
        """h (..., H) -> log-probabilities (..., V)."""
        if hasattr(self, "adaptive"):
            return self.adaptive.log_prob(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], -1)
        half = getattr(self.decoder, "step_weight", None)  # half_step_weights
        if half is not None:
            return F.log_softmax(F.linear(h.to(half.dtype), half).float() + self.decoder.bias, -1)
        return F.log_softmax(self.decoder(h).float(), -1)

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


class Seq2Seq(nn.Module, _FromConfig):
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


class SentimentClassifier(nn.Module, _FromConfig):
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


_INIT_FUNCTIONS = threading.Lock()


@contextmanager
def weights_not_drawn():
    """Modules built inside keep the uninitialised memory their weights were allocated with: every public
    function of torch.nn.init (which nn.Linear, nn.LSTM, nn.Embedding and `init_rnn` call) does nothing. For a
    model whose weights are loaded next: drawing them took 0.38 s of the chat model's 0.5 s load. (A model on
    the "meta" device would need no patching, but torch's normal_ on it imports torch._dynamo, 3 s.)

    Those functions are module-wide: builds inside take turns, and another thread that initialises a model
    meanwhile would get undrawn weights too (nothing does in the app, which only loads)."""
    names = [n for n in vars(nn.init) if n.endswith("_") and not n.startswith("_")]
    with _INIT_FUNCTIONS:
        saved = {n: getattr(nn.init, n) for n in names}
        try:
            for n in names:
                setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
            yield
        finally:
            for n, f in saved.items():
                setattr(nn.init, n, f)


def build_model(task: str, cfg: dict, draw_weights: bool = True) -> nn.Module:
    """The task's model from its config dict; `draw_weights=False` (weights loaded next) skips the random
    initialisation (`weights_not_drawn`)."""
    if task not in MODELS:
        raise ConfigError(f"unknown task {task!r}: use one of {list(MODELS)}")
    if draw_weights:
        return MODELS[task].from_config(cfg)
    with weights_not_drawn():
        return MODELS[task].from_config(cfg)
