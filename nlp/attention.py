"""Attention over a padded memory: Luong (dot, general, concat) and Bahdanau (additive).

All scores have the same contract: queries (B, T, Dq) [or (B, Dq) for one step], memory (B, S, Dm) and a
mask (B, S) that is True at real positions. Weights (B, T, S) sum to 1 over the real positions and are
exactly 0 at padding; the context is their weighted sum of the memory, (B, T, Dm).

  dot       score(q, m) = qᵀ m                      (Luong 2015; needs Dq == Dm)
  general   score(q, m) = qᵀ W m                    (Luong 2015)
  concat    score(q, m) = vᵀ tanh(W [q; m])          (Luong 2015)
  additive  score(q, m) = vᵀ tanh(W_q q + W_m m)     (Bahdanau 2015; concat with W split in two)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KINDS = ("dot", "general", "concat", "additive")


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dim that puts exactly 0 on masked positions (and 0 everywhere if all are)."""
    if mask is None:
        return torch.softmax(scores, -1)
    mask = mask.unsqueeze(-2) if mask.dim() == scores.dim() - 1 else mask
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1)
    return weights.masked_fill(~mask, 0.0)  # an all-padding row gives NaN from softmax: make it 0


class Attention(nn.Module):
    def __init__(self, kind: str, query_dim: int, memory_dim: int, attn_dim: int | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
        if kind == "dot" and query_dim != memory_dim:
            raise ValueError(f"dot attention needs equal query and memory sizes, got {query_dim} and {memory_dim}"
                             " (use 'general' to learn a projection between them)")
        self.kind = kind
        attn_dim = attn_dim or query_dim
        if kind == "general":
            self.W = nn.Linear(memory_dim, query_dim, bias=False)
        elif kind == "concat":
            self.W = nn.Linear(query_dim + memory_dim, attn_dim, bias=False)
            self.v = nn.Linear(attn_dim, 1, bias=False)
        elif kind == "additive":
            self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
            self.W_m = nn.Linear(memory_dim, attn_dim)
            self.v = nn.Linear(attn_dim, 1, bias=False)

    def scores(self, q: Tensor, memory: Tensor) -> Tensor:
        """q (B, T, Dq), memory (B, S, Dm) -> (B, T, S)."""
        if self.kind == "dot":
            return q @ memory.transpose(1, 2)
        if self.kind == "general":
            # qᵀ (W m) = (qᵀ W) m: project whichever side is shorter. A decoding step has one query against S
            # memory rows; projecting the memory there would redo (B, S, Dm) x (Dm, Dq) at every token.
            if q.shape[1] < memory.shape[1]:
                return (q @ self.W.weight) @ memory.transpose(1, 2)
            return q @ self.W(memory).transpose(1, 2)
        T, S = q.shape[1], memory.shape[1]
        if self.kind == "concat":
            pairs = torch.cat([q.unsqueeze(2).expand(-1, -1, S, -1), memory.unsqueeze(1).expand(-1, T, -1, -1)], -1)
            return self.v(torch.tanh(self.W(pairs))).squeeze(-1)
        return self.v(torch.tanh(self.W_q(q).unsqueeze(2) + self.W_m(memory).unsqueeze(1))).squeeze(-1)

    def forward(self, q: Tensor, memory: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        one_step = q.dim() == 2
        if one_step:
            q = q.unsqueeze(1)
        weights = masked_softmax(self.scores(q, memory), mask)
        context = weights @ memory
        if one_step:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights
