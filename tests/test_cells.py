"""The cells written from their equations match PyTorch's fused modules on copied weights."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nlp.cells import GRUCell, LSTMCell, Recurrent, RNNCell, step_stack

FUSED = {"RNN_TANH": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
TOL = dict(atol=1e-5, rtol=1e-5)


def _states(s):
    return s if isinstance(s, tuple) else (s,)


@pytest.mark.parametrize("mode", ["RNN_TANH", "GRU", "LSTM"])
def test_stacked_bidirectional_padded_matches_fused(mode):
    torch.manual_seed(0)
    fused = FUSED[mode](5, 7, num_layers=2, batch_first=True, bidirectional=True).double()
    ours = Recurrent(mode, 5, 7, num_layers=2, batch_first=True, bidirectional=True).double()
    ours.load_state_dict(fused.state_dict())  # same names, same shapes
    lengths = torch.tensor([6, 3, 1, 5])
    x = torch.randn(4, 6, 5, dtype=torch.double)
    for b, n in enumerate(lengths):
        x[b, n:] = 0.0

    x1 = x.clone().requires_grad_(True)
    packed = pack_padded_sequence(x1, lengths, batch_first=True, enforce_sorted=False)
    out_p, st_p = fused(packed)
    out_f, _ = pad_packed_sequence(out_p, batch_first=True, total_length=6)
    x2 = x.clone().requires_grad_(True)
    out_o, st_o = ours(x2, lengths=lengths)

    torch.testing.assert_close(out_o, out_f, **TOL)
    for a, b in zip(_states(st_o), _states(st_p)):
        torch.testing.assert_close(a, b, **TOL)

    # gradients through outputs and final states, for the input and every weight
    w = torch.randn_like(out_f)
    loss_f = (out_f * w).sum() + sum(s.sum() for s in _states(st_p))
    loss_o = (out_o * w).sum() + sum(s.sum() for s in _states(st_o))
    loss_f.backward()
    loss_o.backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    for (name, p_f), (_, p_o) in zip(fused.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p_o.grad, p_f.grad, **TOL, msg=name)


@pytest.mark.parametrize("mode", ["RNN_TANH", "GRU", "LSTM"])
def test_unpadded_with_initial_state_matches_fused(mode):
    torch.manual_seed(1)
    fused = FUSED[mode](3, 4, num_layers=2)
    ours = Recurrent(mode, 3, 4, num_layers=2)
    ours.load_state_dict(fused.state_dict())
    x = torch.randn(5, 2, 3)
    h0 = torch.randn(2, 2, 4)
    hx = (h0, torch.randn(2, 2, 4)) if mode == "LSTM" else h0
    out_f, st_f = fused(x, hx)
    out_o, st_o = ours(x, hx)
    torch.testing.assert_close(out_o, out_f, **TOL)
    for a, b in zip(_states(st_o), _states(st_f)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("ours_cls,fused_cls", [(RNNCell, nn.RNNCell), (GRUCell, nn.GRUCell),
                                                (LSTMCell, nn.LSTMCell)])
def test_single_cells_match(ours_cls, fused_cls):
    torch.manual_seed(2)
    fused, ours = fused_cls(3, 4), ours_cls(3, 4)
    ours.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3)
    for a, b in zip(_states(ours(x)), _states(fused(x))):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_step_stack_equals_running_the_sequence(mode):
    torch.manual_seed(3)
    fused = FUSED[mode](3, 4, num_layers=2, batch_first=True).eval()
    x = torch.randn(1, 6, 3)
    out, _ = fused(x)
    z = torch.zeros(2, 1, 4)
    state = (z, z) if mode == "LSTM" else z
    for t in range(6):
        h, state = step_stack(fused, mode, x[:, t], state)
        torch.testing.assert_close(h, out[:, t], **TOL)


def test_dropout_between_layers_only_in_training():
    r = Recurrent("LSTM", 3, 4, num_layers=2, dropout=0.5).eval()
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(r(x)[0], r(x)[0])


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="mode must be one of"):
        Recurrent("MGU", 3, 4)
