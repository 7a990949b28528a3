"""Where in a reply the chat model's NLL lies: the reference replies of eval's fixed sample of rows, scored by
teacher forcing as `eval` scores them (whole replies, the end token included), grouped by the token's position
in the reply. A model trained on replies cut at N tokens never saw position N or later.

    python scripts/reply_positions.py                                   # the shipped model
    python scripts/reply_positions.py --compare runs/chat-base          # beside stage 1 (configs/chat.toml)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import chat_options  # noqa: E402  (scripts/ is on sys.path when a script runs)

from nlp import data as D  # noqa: E402
from nlp.corpora import load_corpus  # noqa: E402
from nlp.evaluate import chat_rows  # noqa: E402
from nlp.serve import open_checkpoint  # noqa: E402
from nlp.tokenizer import PAD  # noqa: E402

BUCKETS = ((0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60), (60, 80), (80, 10_000))


@torch.no_grad()
def by_position(path: str, corpus: str, split: str, rows: int) -> dict:
    ck = open_checkpoint(path, "chat")
    ds, examples, _ = chat_rows(ck, load_corpus(corpus), split, rows, 0)
    nll_sum, count = [0.0] * len(BUCKETS), [0] * len(BUCKETS)
    for batch in D.batches_of(examples, 64, None):
        logits = ck.model(batch["src"], batch["src_len"], batch["tgt_in"])[0]
        nll = F.cross_entropy(logits.float().transpose(1, 2), batch["tgt_out"], ignore_index=PAD, reduction="none")
        real = batch["tgt_out"] != PAD
        for b, (lo, hi) in enumerate(BUCKETS):
            nll_sum[b] += float(nll[:, lo:hi][real[:, lo:hi]].sum())
            count[b] += int(real[:, lo:hi].sum())
    total, words = sum(nll_sum), D.word_count(ds["response"])
    return {"checkpoint": path, "trained_reply_tokens": ck.config.get("train", {}).get("max_tgt_len"),
            "word_perplexity": round(math.exp(total / words), 1),
            "buckets": [{"positions": f"{lo + 1}-{hi}" if hi < 10_000 else f"{lo + 1}+", "tokens": n,
                         "mean_nll": round(s / max(n, 1), 3), "share_of_nll": round(s / total, 3)}
                        for (lo, hi), s, n in zip(BUCKETS, nll_sum, count)]}


def main() -> int:
    p = chat_options(__doc__, rows=1000)
    p.add_argument("--compare", action="append", default=[], help="another chat checkpoint, shown first")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    results = [by_position(path, a.corpus, a.split, a.rows) for path in [*a.compare, a.checkpoint]]
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    head = " | ".join(f"{r['checkpoint']} (trained on {r['trained_reply_tokens']} tokens): mean NLL, share"
                      for r in results)
    print(f"{a.corpus} {a.split}, {a.rows:,} rows; word perplexity "
          + ", ".join(f"{r['checkpoint']} {r['word_perplexity']}" for r in results) + "\n")
    print(f"| positions in the reply | tokens | {head} |")
    print("| --- | --- |" + " --- |" * len(results))
    for i, bucket in enumerate(results[0]["buckets"]):
        cells = " | ".join(f"{r['buckets'][i]['mean_nll']:.2f}, {r['buckets'][i]['share_of_nll']:.1%}" for r in results)
        print(f"| {bucket['positions']} | {bucket['tokens']:,} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
