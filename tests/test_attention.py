import pytest
import torch

from nlp.attention import KINDS, Attention, masked_softmax


@pytest.mark.parametrize("kind", KINDS)
def test_weights_sum_to_one_and_padding_gets_exactly_zero(kind):
    torch.manual_seed(0)
    attn = Attention(kind, 6, 6, 5)
    q = torch.randn(3, 4, 6)
    memory = torch.randn(3, 7, 6, requires_grad=True)
    lengths = torch.tensor([7, 3, 1])
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    context, w = attn(q, memory, mask)
    assert context.shape == (3, 4, 6) and w.shape == (3, 4, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    assert (w[1, :, 3:] == 0).all() and (w[2, :, 1:] == 0).all()
    context.sum().backward()
    assert memory.grad is not None and memory.grad[0].abs().sum() > 0
    assert (memory.grad[2, 1:] == 0).all()  # nothing flows into padding
    assert all(p.grad is not None for p in attn.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_query_matches_the_batched_form(kind):
    torch.manual_seed(1)
    attn = Attention(kind, 4, 4)
    q, memory = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    ctx_all, w_all = attn(q, memory)
    ctx_1, w_1 = attn(q[:, 1], memory)
    torch.testing.assert_close(ctx_1, ctx_all[:, 1])
    torch.testing.assert_close(w_1, w_all[:, 1])


@pytest.mark.parametrize("T, S", [(1, 7), (3, 5), (6, 2)])
def test_general_scores_are_q_W_m_whichever_side_is_projected(T, S):
    torch.manual_seed(2)
    attn = Attention("general", 4, 6)
    q, memory = torch.randn(2, T, 4), torch.randn(2, S, 6)
    expected = torch.einsum("btq,qm,bsm->bts", q, attn.W.weight, memory)
    torch.testing.assert_close(attn.scores(q, memory), expected)


def test_fully_masked_row_is_zero_not_nan():
    w = masked_softmax(torch.randn(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    assert torch.equal(w[1], torch.zeros(3)) and w[0, 0] == 1


def test_dot_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal query and memory sizes"):
        Attention("dot", 4, 6)
    with pytest.raises(ValueError, match="attention kind"):
        Attention("cosine", 4, 4)
