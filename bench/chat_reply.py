"""How long one chat reply takes at batch 1: the app's default path against plain sampling.

    python bench/chat_reply.py [--checkpoint checkpoints/chat]     # writes bench/results/chat_reply.json

A 3-turn context; the reply to it as the app gives it by default (the reply index's retrieved replies ranked by
the checkpoint's ranker; issue 35 asks for at most 0.6 s median), the same with the decoder's sampled
candidates added ("both") and, as baselines in the same run, the generated candidates alone ("Model-written
replies only") and plain sampling (one sample, the same other settings); and the generated candidates alone at
8, 16 and 24 candidates, for their cost. Median over seeds. The model and its index are loaded as the app loads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, save  # noqa: E402  (bench/ is on sys.path when a script runs)

from nlp.decoding import make_generator  # noqa: E402
from nlp.serve import DEFAULT_SOURCE, chat_reply, default_decoding, open_checkpoint, open_index  # noqa: E402

CONTEXT = ["Hi! How was your weekend?", "Pretty good, I went hiking with my sister. You?",
           "Nice! I mostly stayed home and cooked. Where did you go hiking?"]


def median_reply_ms(ck, cfg, repeats: int, source: str = "generated", index=None) -> tuple[float, int]:
    times, tokens = [], 0
    for seed in range(repeats + 2):
        start = time.perf_counter()
        reply = chat_reply(ck, CONTEXT, cfg, make_generator(seed), source=source, index=index)
        "".join(reply.stream)
        if seed >= 2:  # the first two warm up
            times.append((time.perf_counter() - start) * 1000)
            tokens += len(reply.reply_tokens)
    times.sort()
    return times[len(times) // 2], tokens // repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parent.parent / "checkpoints" / "chat"))
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    ck = open_checkpoint(a.checkpoint, "chat")  # as the app and the CLI load it
    index = open_index(ck)
    default = default_decoding(ck)
    plain = dataclasses.replace(default, num_candidates=1)
    ours, ours_tokens = median_reply_ms(ck, default, a.repeats, DEFAULT_SOURCE, index)
    both, both_tokens = median_reply_ms(ck, default, a.repeats, "both", index)
    generated, generated_tokens = median_reply_ms(ck, default, a.repeats)
    base, base_tokens = median_reply_ms(ck, plain, a.repeats)
    ms = {f"the app's default: the index's retrieved replies ranked ({DEFAULT_SOURCE}; ours)": round(ours, 1),
          f"retrieved + {default.num_candidates} sampled candidates, one score (both)": round(both, 1),
          f"generated replies only, {default.num_candidates} candidates (baseline)": round(generated, 1),
          "plain sampling, 1 candidate (baseline)": round(base, 1)}
    tokens = {"ours": ours_tokens, "both": both_tokens, "generated only": generated_tokens,
              "plain sampling": base_tokens}
    for n in (8, 16, 24):
        ranked_ms, tokens[f"{n} candidates"] = median_reply_ms(ck, dataclasses.replace(default, num_candidates=n),
                                                                a.repeats)
        ms[f"generated only, {n} candidates"] = round(ranked_ms, 1)
    save("chat_reply", {"machine": machine(), "checkpoint": a.checkpoint, "context_turns": len(CONTEXT),
                        "index": None if index is None else len(index), "ranker": ck.ranker is not None,
                        "what": "one chat reply at batch 1 (median over seeds)", "ms_per_reply": ms,
                        "mean_reply_tokens": tokens, "decoding": dataclasses.asdict(default)})


if __name__ == "__main__":
    main()
