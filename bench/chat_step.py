"""What a chat training step costs, piece by piece: the shipped shape against the levers of issue 11.

    python bench/chat_step.py                 # writes bench/results/chat_step.json

Forward + backward + AdamW of the encoder-decoder on one batch of 64 (context 20-64 tokens, reply 5-30, the
spread of the real data after the recipe's limits), float32. Rows:
  baseline  the previous recipe: emb 256, packed 1x256 BiLSTM encoder, decoder started from its final states
  unpacked  the same, encoder run unpacked (exact; nlp.models.run_bidirectional_unpacked), bridge = "pool"
  + head    and the next-reply head (a second encoder pass over the replies, a 64 x 64 score matrix)
  recipe    configs/chat.toml (issue 11, shipped): emb 512 (the LM's width, so the decoder can
            start from it), unpacked, head
"""

from __future__ import annotations

import random
import sys
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, median_ms, save  # noqa: E402  (bench/ is on sys.path when a script runs)

from nlp.data import ChatExample, collate_chat  # noqa: E402
from nlp.models import build_model  # noqa: E402
from nlp.rnn import token_nll  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def batch(size: int = 64, seed: int = 0) -> dict:
    rng = random.Random(seed)
    ex = [ChatExample([rng.randrange(10, 8000) for _ in range(rng.randint(20, 64))],
                      [rng.randrange(10, 8000) for _ in range(rng.randint(5, 30))]) for _ in range(size)]
    return collate_chat(sorted(ex, key=lambda e: len(e.src) + len(e.tgt)))


def step_ms(cfg: dict, b: dict, head: bool, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_model("chat", {"vocab_size": 8000, **cfg}).train()
    opt = torch.optim.AdamW(model.parameters(), 2e-3)

    def step():
        out = model(b["src"], b["src_len"], b["tgt_in"], *((b["reply"], b["reply_len"]) if head else ()))
        loss, n = token_nll(out[0], b["tgt_out"])
        loss = loss / n + (F.cross_entropy(out[2], torch.arange(len(out[2]))) if head else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return median_ms(step, repeats, warmup=2)


def main(repeats: int = 7) -> None:
    recipe = tomllib.loads((ROOT / "configs" / "chat.toml").read_text())["model"]
    old = {**recipe, "emb_dim": 256, "bridge": "final", "rank_dim": 0}
    b = batch()
    rows = {"baseline: emb 256, packed encoder, final-state bridge": step_ms(old, b, False, repeats),
            "emb 256, unpacked encoder, pool bridge": step_ms({**old, "bridge": "pool"}, b, False, repeats),
            "emb 256, unpacked, pool, next-reply head": step_ms({**old, "bridge": "pool", "rank_dim": 256}, b, True,
                                                                repeats),
            "recipe: emb 512, unpacked, pool, next-reply head": step_ms(recipe, b, True, repeats)}
    base = next(iter(rows.values()))
    save("chat_step", {"machine": machine(), "what": "fwd+bwd+AdamW of the chat model, batch 64, context 20-64 "
                       "and reply 5-30 tokens, float32",
                       "ms_per_step": {k: round(v, 1) for k, v in rows.items()},
                       "relative_to_baseline": {k: round(v / base, 2) for k, v in rows.items()}})


if __name__ == "__main__":
    main()
