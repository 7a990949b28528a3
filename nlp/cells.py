"""RNN, GRU and LSTM cells written from their textbook equations, and a layer runner that stacks them.

This is the teaching path. The fast path is PyTorch's fused `nn.LSTM`/`nn.GRU` (cuDNN / MKL-DNN); the
modules here keep the very same parameter names and gate order as those, so a state dict moves between
the two unchanged and the tests can check outputs, final states and gradients against them.

Notation, per time step t, input x_t (B, I), previous hidden h (B, H):
  RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
  GRU   r  = σ(W_ir x + b_ir + W_hr h + b_hr)            reset gate
        z  = σ(W_iz x + b_iz + W_hz h + b_hz)            update gate
        n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))   candidate
        h' = (1 - z) ⊙ n + z ⊙ h
  LSTM  i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh) split in four
        c' = f ⊙ c + i ⊙ g                              the cell: an additive path that keeps gradients alive
        h' = o ⊙ tanh(c')
The input projection W_ih x does not depend on h, so the runner computes it for all steps in one matmul and
only the recurrent half runs step by step: the same trick cuDNN uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

GATES = {"RNN_TANH": 1, "GRU": 3, "LSTM": 4}


# --------------------------------------------------------------------------- the equations
def rnn_step(xp: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """xp = W_ih x + b_ih, already computed."""
    hh = h @ w_hh.t()
    if b_hh is not None:
        hh = hh + b_hh
    return torch.tanh(xp + hh)


def gru_step(xp: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    hh = h @ w_hh.t()
    if b_hh is not None:
        hh = hh + b_hh
    x_r, x_z, x_n = xp.chunk(3, -1)
    h_r, h_z, h_n = hh.chunk(3, -1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def lstm_step(xp: Tensor, state: tuple[Tensor, Tensor], w_hh: Tensor, b_hh: Tensor | None):
    h, c = state
    gates = xp + h @ w_hh.t()
    if b_hh is not None:
        gates = gates + b_hh
    return lstm_update(gates, c)


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM's cell and output from its summed gate pre-activations (i, f, g, o): the new (h, c)."""
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def _step(mode: str, xp: Tensor, state, w_hh: Tensor, b_hh: Tensor | None):
    if mode == "LSTM":
        return lstm_step(xp, state, w_hh, b_hh)
    return (gru_step if mode == "GRU" else rnn_step)(xp, state, w_hh, b_hh)


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    """PyTorch's default for recurrent layers: U(-1/sqrt(H), 1/sqrt(H)); models re-initialise on top."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


# --------------------------------------------------------------------------- single cells
class _Cell(nn.Module):
    mode = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        g = GATES[self.mode] * hidden_size
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(g)) if bias else None
        _init_uniform(self, hidden_size)

    def _xp(self, x: Tensor) -> Tensor:
        xp = x @ self.weight_ih.t()
        return xp + self.bias_ih if self.bias_ih is not None else xp


class RNNCell(_Cell):
    """Elman cell with tanh; same parameters as `nn.RNNCell`."""
    mode = "RNN_TANH"

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h
        return rnn_step(self._xp(x), h, self.weight_hh, self.bias_hh)


class GRUCell(_Cell):
    """Same parameters and gate order (r, z, n) as `nn.GRUCell`."""
    mode = "GRU"

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h
        return gru_step(self._xp(x), h, self.weight_hh, self.bias_hh)


class LSTMCell(_Cell):
    """Same parameters and gate order (i, f, g, o) as `nn.LSTMCell`."""
    mode = "LSTM"

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden_size)
            state = (z, z)
        return lstm_step(self._xp(x), state, self.weight_hh, self.bias_hh)


# --------------------------------------------------------------------------- the layer runner
class Recurrent(nn.Module):
    """Deep and bidirectional RNN / GRU / LSTM built on the step equations above.

    A drop-in for `nn.RNN` / `nn.GRU` / `nn.LSTM` (same constructor, same parameter names, same shapes in
    and out) that also takes `lengths` for padded batches: each sequence stops at its own length, the
    backward direction starts at its last real token, outputs past the end are zero and the final state is
    the one at the true end, exactly what the fused modules give on a packed sequence.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False):
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"mode must be one of {list(GATES)}, got {mode!r}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional = dropout, bidirectional
        dirs = 2 if bidirectional else 1
        g = GATES[mode] * hidden_size
        for layer in range(num_layers):
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                size_in = input_size if layer == 0 else hidden_size * dirs
                self.register_parameter("weight_ih" + sfx, nn.Parameter(torch.empty(g, size_in)))
                self.register_parameter("weight_hh" + sfx, nn.Parameter(torch.empty(g, hidden_size)))
                if bias:
                    self.register_parameter("bias_ih" + sfx, nn.Parameter(torch.empty(g)))
                    self.register_parameter("bias_hh" + sfx, nn.Parameter(torch.empty(g)))
        _init_uniform(self, hidden_size)

    def weights(self, layer: int, reverse: bool = False):
        sfx = f"_l{layer}" + ("_reverse" if reverse else "")
        get = lambda name: getattr(self, name + sfx, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _run_direction(self, x: Tensor, state, weights, mask: Tensor | None, reverse: bool):
        """x (T, B, I) -> outputs (T, B, H) and the final state, one direction of one layer."""
        w_ih, w_hh, b_ih, b_hh = weights
        xp = x @ w_ih.t()  # (T, B, G*H): the whole input projection at once
        if b_ih is not None:
            xp = xp + b_ih
        outs: list[Tensor] = [x.new_empty(0)] * x.shape[0]
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        for t in steps:
            new = _step(self.mode, xp[t], state, w_hh, b_hh)
            if mask is not None:  # past a sequence's end its state stands still
                m = mask[t]
                new = tuple(m * n + (1 - m) * s for n, s in zip(new, state)) if self.mode == "LSTM" \
                    else m * new + (1 - m) * state
            state = new
            h = state[0] if self.mode == "LSTM" else state
            outs[t] = h if mask is None else h * mask[t]
        return torch.stack(outs), state

    def forward(self, x: Tensor, hx=None, lengths: Tensor | None = None):
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        dirs = 2 if self.bidirectional else 1
        mask = None
        if lengths is not None:
            steps = torch.arange(T, device=x.device).unsqueeze(1)
            mask = (steps < lengths.to(x.device).unsqueeze(0)).to(x.dtype).unsqueeze(-1)  # (T, B, 1)
        if hx is None:
            z = x.new_zeros(self.num_layers * dirs, B, self.hidden_size)
            hx = (z, z) if self.mode == "LSTM" else z
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                state = (hx[0][k], hx[1][k]) if self.mode == "LSTM" else hx[k]
                out, state = self._run_direction(x, state, self.weights(layer, bool(d)), mask, bool(d))
                outs.append(out)
                if self.mode == "LSTM":
                    finals_h.append(state[0])
                    finals_c.append(state[1])
                else:
                    finals_h.append(state)
            x = torch.cat(outs, -1) if dirs == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, True)
        out = x.transpose(0, 1) if self.batch_first else x
        h_n = torch.stack(finals_h)
        return (out, (h_n, torch.stack(finals_c))) if self.mode == "LSTM" else (out, h_n)


def step_stack(rnn: nn.Module, mode: str, x: Tensor, state):
    """One time step through every layer of a unidirectional stack, for token-by-token decoding.

    Works on `nn.LSTM`/`nn.GRU` and `Recurrent` alike (same parameter names). At batch 1 a plain
    matrix-vector step is much faster than calling the fused module once per token (see DESIGN.md).
    x (B, I); state (L, B, H) or a pair of them for the LSTM. Dropout is off: this is inference.
    """
    packed = getattr(rnn, "step_weights", None)  # set by nlp.cpu_serving.half_step_weights
    if packed is not None and mode == "LSTM":
        return lstm_stack_step(packed, x, state)
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        sfx = f"_l{layer}"
        w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
        b_ih, b_hh = getattr(rnn, "bias_ih" + sfx, None), getattr(rnn, "bias_hh" + sfx, None)
        xp = x @ w_ih.t()
        if b_ih is not None:
            xp = xp + b_ih
        if mode == "LSTM":
            h, c = lstm_step(xp, (state[0][layer], state[1][layer]), w_hh, b_hh)
            cs.append(c)
        else:
            h = _step(mode, xp, state[layer], w_hh, b_hh)
        hs.append(h)
        x = h
    return x, ((torch.stack(hs), torch.stack(cs)) if mode == "LSTM" else torch.stack(hs))


def lstm_stack_step(packed: list[tuple[Tensor, Tensor]], x: Tensor, state: tuple[Tensor, Tensor]):
    """`step_stack` for an LSTM stack whose layers come packed as (W, b): W = [W_ih | W_hh] (4H, I + H), in
    any dtype (bfloat16 halves what a step reads), b = b_ih + b_hh. One matrix-vector product a layer on
    [x; h]; the gates, the cell and the states stay in the state's dtype (float32)."""
    hs, cs = [], []
    for layer, (w, b) in enumerate(packed):
        h, c = state[0][layer], state[1][layer]
        h, c = lstm_update((torch.cat([x, h], -1).to(w.dtype) @ w.t()).to(h.dtype) + b, c)
        hs.append(h)
        cs.append(c)
        x = h
    return x, (torch.stack(hs), torch.stack(cs))
