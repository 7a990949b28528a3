"""Batch-1 decoding speed of the shipped language model against the memory-bandwidth floor, in one run.

    python bench/decode_speed.py [--checkpoint checkpoints/lm] [--tokens 200]   # writes bench/results/decode_speed.json

At batch 1 a decoding step reads every weight it multiplies once: the recurrent layers and the output layer
(an embedding row is all it reads of the input table). Those bytes over the machine's memory bandwidth are the
least time a step can take: the floor. The bandwidth is measured here, as a large tensor copy (bytes read +
bytes written). This machine's speed drifts within minutes, so the variants run in turn, one call of each per
round (`--repeats` rounds), the copy among them: `times_the_floor` is each round's time over the same round's
floor, median over rounds; `ms_per_token` the median time. Per token:
- "sampling (ours)": `sample_tokens` with the checkpoint's default decoding (temperature, top-p, repetition
  penalty, n-gram ban), as the app and the CLI run it;
- "sampling, whole-vocabulary filtering (baseline)": the same decoding the way the loop ran it before issue 13's
  work on it: every step recomputes the repetition penalty and n-gram bans from the whole history (with today's
  `adjust`), sorts the whole vocabulary for top-p and draws a race number for every token (a draw from the same
  distribution; other tokens for the same seed);
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
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from common import interleaved_ms, machine, save  # noqa: E402

from nlp import decoding  # noqa: E402
from nlp.checkpoint import load_checkpoint  # noqa: E402
from nlp.serve import default_decoding, open_checkpoint, with_bans  # noqa: E402

PROMPT = "The history of the city begins in the"


def weight_bytes_per_token(model) -> int:
    """Bytes of the weights one batch-1 step multiplies: the recurrent stack and the output layer."""
    tensors = list(model.rnn.parameters()) + list(model.decoder.parameters())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "lm"))
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=9, help="rounds")
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

    def whole_vocabulary():
        """The sampling loop before issue 13's work on it: each step adjusts the scores from the whole
        history (`adjust`), filters the whole vocabulary (a sort for top-p) and races every token."""
        generator = decoding.make_generator(0)
        log_probs, state = decoding.prime(m, prompt)
        history = list(prompt)
        for step in range(a.tokens):
            probs = torch.softmax(decoding.filter_scores(decoding.adjust(log_probs, [history], cfg, step), cfg), -1)
            q = torch.empty_like(probs).exponential_(1, generator=generator)
            history.append(int((probs / q).argmax(-1)[0]))
            log_probs, state = m.step(torch.tensor(history[-1:]), state)
        return history[len(prompt):]

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

    src = torch.ones(512 * 2**20 // 4)
    dst = torch.empty_like(src)
    names = {"sampling (ours)": sampling, "sampling, whole-vocabulary filtering (baseline)": whole_vocabulary,
             "model step only": model_steps(m),
             "model step, only the output layer transposed (baseline)": model_steps(output_only),
             "model step, weights as saved (baseline)": model_steps(saved),
             "nn.LSTM once per token (baseline)": fused_per_token, "copy": lambda: dst.copy_(src)}
    times = interleaved_ms(names, a.repeats)
    bandwidth = [2 * src.numel() * 4 / (ms / 1000) / 1e9 for ms in times.pop("copy")]
    weights = weight_bytes_per_token(m)
    floors = [weights / (gb_s * 1e9) * 1000 for gb_s in bandwidth]  # ms a token, per round
    per_token = {name: statistics.median(t) / a.tokens for name, t in times.items()}
    save("decode_speed", {
        "machine": machine(), "checkpoint": a.checkpoint, "tokens": a.tokens, "rounds": a.repeats, "decoding": {
            k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("banned_ids",)},
        "weight_mb_per_token": round(weights / 1e6, 2), "copy_bandwidth_gb_s": round(statistics.median(bandwidth), 1),
        "floor_ms_per_token": round(statistics.median(floors), 3),
        "ms_per_token": {name: round(ms, 3) for name, ms in per_token.items()},
        # each round's time over the same round's floor, median over rounds
        "times_the_floor": {name: round(statistics.median(t / a.tokens / f for t, f in zip(times[name], floors)), 2)
                            for name in ("sampling (ours)", "sampling, whole-vocabulary filtering (baseline)",
                                         "model step only")},
        "same_tokens_as_saved_weights": ours_tokens == saved_tokens})


if __name__ == "__main__":
    main()
