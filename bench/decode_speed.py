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
  as the app and the CLI load the model (`nlp.serve.open_checkpoint`): on a CPU with native bfloat16, steps
  that read bfloat16 copies of the weights (`nlp.cpu_serving.half_step_weights`), else the float32 weights stored
  transposed (`nlp.cpu_serving.transposed_weights`); baselines: "float32 weights" (transposed; the same as ours
  where bfloat16 is not native), "only the output layer transposed" (before the recurrent weights were), and
  "weights as saved", as `load_checkpoint` returns them; "sampling, float32 weights" is the baseline of ours;
- "nn.LSTM once per token (baseline)": the fused module called per token (weights as saved), plus the output
  layer. `same_tokens_as_saved_weights` says whether sampling with the float32 weights transposed draws the
  same tokens as with the weights as saved. `half_steps`: what the bfloat16 steps do to the model, read
  token by token (teacher-forced) over the first --quality-tokens tokens of WikiText-2 validation: the token
  perplexity with float32 and with bfloat16 steps, the largest log-probability difference, and how often the
  most likely next token is the same.
The floor is that of the float32 weights, as issue 13 defines it (at most 2x for sampling); the floor of the
bytes the bfloat16 steps read is reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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
    tensors = list(model.rnn.parameters()) + list(model.out.parameters())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def half_bytes_per_token(model) -> int:
    """Bytes a step reads from the bfloat16 copies of `half_step_weights` (0 when the model has none)."""
    packed = [w for w, _ in getattr(model.rnn, "step_weights", [])]
    out = getattr(model.out, "step_weight", None)
    return sum(t.numel() * t.element_size() for t in packed + ([out] if out is not None else []))


def step_quality(half, full, tokenizer, n: int) -> dict:
    """Token by token over WikiText-2 validation text (teacher-forced): what bfloat16 steps change."""
    from nlp.corpora import load_corpus

    ids: list[int] = []
    for line in load_corpus("wikitext2")["validation"]["text"]:
        ids += tokenizer.encode(line)
        if len(ids) > n:
            break
    ids = ids[: n + 1]
    nll = {"float32": 0.0, "bfloat16": 0.0}
    worst, same = 0.0, 0
    states = {name: model.start(torch.tensor([ids[:1]])) for name, model in (("float32", full), ("bfloat16", half))}
    for t in range(1, len(ids)):
        lp = {}
        for name, model in (("float32", full), ("bfloat16", half)):
            lp[name], state = states[name]
            nll[name] -= float(lp[name][0, ids[t]])
            states[name] = model.step(torch.tensor([ids[t]]), state)
        worst = max(worst, float((lp["float32"] - lp["bfloat16"]).abs().max()))
        same += int(lp["float32"].argmax()) == int(lp["bfloat16"].argmax())
    steps = len(ids) - 1
    return {"tokens": steps, "token_perplexity": {k: round(math.exp(v / steps), 3) for k, v in nll.items()},
            "max_abs_logprob_difference": round(worst, 4), "same_most_likely_token": round(same / steps, 4)}


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "lm"))
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=9, help="rounds")
    p.add_argument("--quality-tokens", type=int, default=2000)
    a = p.parse_args()
    ck = open_checkpoint(a.checkpoint, "lm")
    m = ck.model
    m32 = open_checkpoint(a.checkpoint, "lm", half_steps=False).model
    saved = load_checkpoint(a.checkpoint).model
    output_only = load_checkpoint(a.checkpoint).model
    output_only.out.weight.data = output_only.out.weight.data.t().contiguous().t()
    cfg = dataclasses.replace(with_bans(ck, default_decoding(ck)), max_new_tokens=a.tokens,
                              min_new_tokens=a.tokens, stop_at_eos=False)
    prompt = ck.tokenizer.encode(PROMPT)

    def sampling(model=m):
        tokens = list(decoding.sample_tokens(model, prompt, cfg, decoding.make_generator(0)))
        assert len(tokens) == a.tokens
        return tokens

    ours_tokens = sampling()
    float32_tokens = sampling(m32)
    saved_tokens = sampling(saved)

    def whole_vocabulary():
        """The sampling loop before issue 13's work on it: each step adjusts the scores from the whole
        history (a fresh ScoreAdjuster each step), filters the whole vocabulary (a sort for top-p) and races
        every token."""
        generator = decoding.make_generator(0)
        log_probs, state = decoding.prime(m, prompt)
        history = list(prompt)
        for step in range(a.tokens):
            adjusted = decoding.ScoreAdjuster(cfg, [history], log_probs.shape[1], log_probs.device, step)(log_probs)
            probs = torch.softmax(decoding.filter_scores(adjusted, cfg), -1)
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
            F.log_softmax(saved.out(out[:, -1]), -1)

    src = torch.ones(512 * 2**20 // 4)
    dst = torch.empty_like(src)
    names = {"sampling (ours)": sampling, "sampling, float32 weights (baseline)": lambda: sampling(m32),
             "sampling, whole-vocabulary filtering (baseline)": whole_vocabulary,
             "model step only": model_steps(m), "model step, float32 weights (baseline)": model_steps(m32),
             "model step, only the output layer transposed (baseline)": model_steps(output_only),
             "model step, weights as saved (baseline)": model_steps(saved),
             "nn.LSTM once per token (baseline)": fused_per_token, "copy": lambda: dst.copy_(src)}
    times = interleaved_ms(names, a.repeats)
    bandwidth = [2 * src.numel() * 4 / (ms / 1000) / 1e9 for ms in times.pop("copy")]
    weights = weight_bytes_per_token(m32)
    floors = [weights / (gb_s * 1e9) * 1000 for gb_s in bandwidth]  # ms a token, per round
    half = half_bytes_per_token(m)
    per_token = {name: statistics.median(t) / a.tokens for name, t in times.items()}
    save("decode_speed", {
        "machine": machine(), "checkpoint": a.checkpoint, "tokens": a.tokens, "rounds": a.repeats, "decoding": {
            k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("banned_ids",)},
        "weight_mb_per_token": round(weights / 1e6, 2), "copy_bandwidth_gb_s": round(statistics.median(bandwidth), 1),
        "floor_ms_per_token": round(statistics.median(floors), 3),
        "half_step_weight_mb_per_token": round(half / 1e6, 2) if half else None,
        "half_step_floor_ms_per_token": round(statistics.median(half / (g * 1e9) * 1000 for g in bandwidth), 3)
        if half else None,
        "ms_per_token": {name: round(ms, 3) for name, ms in per_token.items()},
        # each round's time over the same round's floor, median over rounds
        "times_the_floor": {name: round(statistics.median(t / a.tokens / f for t, f in zip(times[name], floors)), 2)
                            for name in ("sampling (ours)", "sampling, float32 weights (baseline)",
                                         "sampling, whole-vocabulary filtering (baseline)", "model step only",
                                         "model step, float32 weights (baseline)")},
        "times_the_half_step_floor": {name: round(statistics.median(t / a.tokens / (f * half / weights) for t, f in
                                                                    zip(times[name], floors)), 2)
                                      for name in ("sampling (ours)", "model step only")} if half else None,
        "same_tokens_as_saved_weights": float32_tokens == saved_tokens,
        "half_steps": step_quality(m, m32, ck.tokenizer, a.quality_tokens) if half else "not used: no native "
                      "bfloat16 on this CPU", "same_tokens_as_float32": ours_tokens == float32_tokens})


if __name__ == "__main__":
    main()
