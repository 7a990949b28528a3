"""Speed of the recurrent paths, each against its baseline in the same run.

    python bench/recurrent.py                 # writes bench/results/recurrent.json

1. Batch-1 generation step (the app's hot path): `LanguageModel.step` (plain matrix-vector step through the
   stack, nlp.cells.step_stack) against calling the fused `nn.LSTM` once per token. 2x512 LSTM, vocab 8000.
2. Training step (forward + backward) of a 2x256 LSTM over (32, 70) tokens: the cells written from the
   equations (nlp.cells.Recurrent) against the fused `nn.LSTM`.
Times are medians over repeats after a warm-up; the JSON records the machine they ran on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, median_ms, save  # noqa: E402  (bench/ is on sys.path when a script runs)

from nlp.cells import Recurrent  # noqa: E402
from nlp.models import LanguageModel, LMConfig  # noqa: E402


@torch.no_grad()
def bench_decode_step(tokens: int = 50, repeats: int = 5) -> dict:
    torch.manual_seed(0)
    m = LanguageModel(LMConfig(vocab_size=8000, emb_dim=512, hidden_size=512, num_layers=2)).eval()
    _, start = m.start(torch.randint(5, 8000, (1, 20)))
    tok = torch.tensor([42])

    def ours():
        state = start
        for _ in range(tokens):
            _, state = m.step(tok, state)

    def fused_per_token():
        state = (start["h"].transpose(0, 1).contiguous(), start["c"].transpose(0, 1).contiguous())
        for _ in range(tokens):
            out, state = m.rnn(m.embed(tok).unsqueeze(1), state)
            F.log_softmax(m.out(out[:, -1]), -1)

    a, b = median_ms(ours, repeats) / tokens, median_ms(fused_per_token, repeats) / tokens
    return {"what": "batch-1 generation step, 2x512 LSTM, vocab 8000", "ms_per_token": {
        "step_stack (ours)": round(a, 3), "nn.LSTM per token (baseline)": round(b, 3)}, "speedup": round(b / a, 2)}


def bench_train_step(repeats: int = 5) -> dict:
    torch.manual_seed(0)
    fused = torch.nn.LSTM(256, 256, 2, batch_first=True)
    cells = Recurrent("LSTM", 256, 256, 2, batch_first=True)
    cells.load_state_dict(fused.state_dict())
    x = torch.randn(32, 70, 256)

    def step(rnn):
        def run():
            rnn.zero_grad()
            out, _ = rnn(x)
            out.sum().backward()
        return run

    a, b = median_ms(step(cells), repeats), median_ms(step(fused), repeats)
    return {"what": "forward+backward, 2x256 LSTM, batch 32 x 70 steps", "ms_per_step": {
        "cells from the equations": round(a, 2), "fused nn.LSTM (baseline)": round(b, 2)},
        "cells_relative_speed": round(b / a, 2)}


def main() -> None:
    save("recurrent", {"machine": machine(), "decode_step": bench_decode_step(), "train_step": bench_train_step()})


if __name__ == "__main__":
    main()
