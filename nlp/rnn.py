"""What the three models share: building a recurrent stack (fused or from the cells), its initialisation,
running it on padded batches (packed, or unpacked for a bidirectional encoder), the per-token losses, the
decoding state's layout, and the checks of a model config."""

from __future__ import annotations

from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nlp.cells import Recurrent
from nlp.cpu_serving import fused_turn
from nlp.errors import ConfigError
from nlp.tokenizer import PAD

FUSED = {"lstm": nn.LSTM, "gru": nn.GRU}
MODES = {"lstm": "LSTM", "gru": "GRU"}


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


MAX_DIM, MAX_LAYERS, MAX_VOCAB = 16_384, 16, 1_000_000  # far above any model here; a typo stays an error


def check_model_config(config) -> None:
    """Every setting of a model config of the right type and within reason, as a ConfigError that names it: a
    size of 0, -5 or 10**9 would otherwise fail deep in torch, or try to allocate terabytes."""
    for f in fields(config):
        value, name = getattr(config, f.name), f"model.{f.name}"
        if f.type in (int, "int"):
            low = 0 if f.name == "rank_dim" else 1
            high = MAX_VOCAB if f.name == "vocab_size" else MAX_LAYERS if f.name.endswith("layers") else MAX_DIM
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{name} must be a whole number from {low} to {high:,}, not {value!r}")
        elif f.type in (float, "float"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be a number from 0 to below 1, not {value!r}")
        elif f.type in (bool, "bool") and not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        elif f.type in (str, "str") and not isinstance(value, str):
            raise ConfigError(f"{name} must be a text, not {value!r}")
    cutoffs = getattr(config, "adaptive_cutoffs", [])
    if not isinstance(cutoffs, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in cutoffs) \
            or cutoffs != sorted(set(cutoffs)) or (cutoffs and not 0 < cutoffs[0] <= cutoffs[-1] < config.vocab_size):
        raise ConfigError(f"model.adaptive_cutoffs must be rising whole numbers between 0 and the vocabulary size, "
                          f"not {cutoffs!r}")


class FromConfig:
    Config: type
    task: str

    @classmethod
    def from_config(cls, cfg: dict):
        known = {f.name for f in fields(cls.Config)}
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
        config = cls.Config(**cfg)
        check_model_config(config)
        return cls(config)

    def config_dict(self) -> dict:
        return asdict(self.config)
