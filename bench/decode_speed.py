"""Batch-1 decoding speed of the shipped language model against the memory-bandwidth floor, in one run.

    python bench/decode_speed.py [--checkpoint checkpoints/lm] [--tokens 200]   # writes bench/results/decode_speed.json

At batch 1 a decoding step reads every weight it multiplies once: the recurrent layers and the output layer
(an embedding row is all it reads of the input table). Those bytes over the machine's memory bandwidth are the
least time a step can take: the floor. The bandwidth is measured here, as a large tensor copy (bytes read +
bytes written, over the median time). Against it, per token (medians over repeats):
- "sampling (ours)": `sample_tokens` with the checkpoint's default decoding (temperature, top-p, repetition
  penalty, n-gram ban), as the app and the CLI run it;
- "sampling, whole-vocabulary filtering (baseline)": the same with the candidate shortcut off (every step
  sorts the whole vocabulary for top-p, as before issue 13); it draws the same tokens;
- "model step only": `LanguageModel.step` (the matrix-vector step through the stack and the output layer),
  with the recurrent and output weights stored transposed as the app and the CLI load them
  (`nlp.serve.open_checkpoint`, `nlp.models.transposed_weights`); baselines: "only the output layer
  transposed" (before the recurrent weights were), and "weights as saved", as `load_checkpoint` returns them;
- "nn.LSTM once per token (baseline)": the fused module called per token (weights as saved), plus the output
  layer. `same_tokens_as_saved_weights` says whether sampling with the weights as saved draws the same tokens.
Issue 13 asks for sampling at most 2x the floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from common import machine, median_ms, save  # noqa: E402

from nlp import decoding  # noqa: E402
from nlp.checkpoint import load_checkpoint  # noqa: E402
from nlp.serve import default_decoding, open_checkpoint, with_bans  # noqa: E402

PROMPT = "The history of the city begins in the"


def copy_bandwidth_gb_s(megabytes: int = 512, repeats: int = 7) -> float:
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), repeats, warmup=2)
    return 2 * src.numel() * 4 / (ms / 1000) / 1e9


def weight_bytes_per_token(model) -> int:
    """Bytes of the weights one batch-1 step multiplies: the recurrent stack and the output layer."""
    tensors = list(model.rnn.parameters()) + list(model.decoder.parameters())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "lm"))
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    ck = open_checkpoint(a.checkpoint, "lm")
    m = ck.model
    saved = load_checkpoint(a.checkpoint).model
    output_only = load_checkpoint(a.checkpoint).model
    output_only.decoder.weight.data = output_only.decoder.weight.data.t().contiguous().t()
    cfg = dataclasses.replace(with_bans(ck, default_decoding(ck)), max_new_tokens=a.tokens,
                              min_new_tokens=a.tokens, stop_at_eos=False)
    prompt = ck.tokenizer.encode(PROMPT)

    def sampling(model=m):
        tokens = list(decoding.sample_tokens(model, prompt, cfg, decoding.make_generator(0)))
        assert len(tokens) == a.tokens
        return tokens

    ours_tokens = sampling()
    saved_tokens = sampling(saved)
    ours = median_ms(sampling, a.repeats, warmup=1) / a.tokens
    shortcut = decoding.CANDIDATES
    decoding.CANDIDATES = 10**9  # no shortcut: filter the whole vocabulary every step
    try:
        base_tokens = sampling()
        base = median_ms(sampling, a.repeats, warmup=1) / a.tokens
    finally:
        decoding.CANDIDATES = shortcut

    _, start = m.start(torch.tensor([prompt]))
    tok = torch.tensor([prompt[-1]])

    def model_steps(model):
        def run():
            state = start
            for _ in range(a.tokens):
                _, state = model.step(tok, state)
        return run

    def fused_per_token():
        state = (start["h"].transpose(0, 1).contiguous(), start["c"].transpose(0, 1).contiguous())
        for _ in range(a.tokens):
            out, state = saved.rnn(saved.embed(tok).unsqueeze(1), state)
            F.log_softmax(saved.decoder(out[:, -1]), -1)

    step = median_ms(model_steps(m), a.repeats, warmup=1) / a.tokens
    step_output_only = median_ms(model_steps(output_only), a.repeats, warmup=1) / a.tokens
    step_saved = median_ms(model_steps(saved), a.repeats, warmup=1) / a.tokens
    fused = median_ms(fused_per_token, a.repeats, warmup=1) / a.tokens
    bandwidth = copy_bandwidth_gb_s()
    weights = weight_bytes_per_token(m)
    floor = weights / (bandwidth * 1e9) * 1000
    save("decode_speed", {
        "machine": machine(), "checkpoint": a.checkpoint, "tokens": a.tokens, "decoding": {
            k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("banned_ids",)},
        "weight_mb_per_token": round(weights / 1e6, 2), "copy_bandwidth_gb_s": round(bandwidth, 1),
        "floor_ms_per_token": round(floor, 3),
        "ms_per_token": {"sampling (ours)": round(ours, 3),
                         "sampling, whole-vocabulary filtering (baseline)": round(base, 3),
                         "model step only": round(step, 3),
                         "model step, only the output layer transposed (baseline)": round(step_output_only, 3),
                         "model step, weights as saved (baseline)": round(step_saved, 3),
                         "nn.LSTM once per token (baseline)": round(fused, 3)},
        "times_the_floor": {"sampling (ours)": round(ours / floor, 2),
                            "sampling, whole-vocabulary filtering (baseline)": round(base / floor, 2),
                            "model step only": round(step / floor, 2)},
        "same_tokens_as_baseline": ours_tokens == base_tokens,
        "same_tokens_as_saved_weights": ours_tokens == saved_tokens})


if __name__ == "__main__":
    main()
