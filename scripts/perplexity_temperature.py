"""Is the chat model's word perplexity a matter of calibration? It was trained with label smoothing 0.1, which
can leave a model under-confident. Reply perplexity (teacher forcing, as eval computes it) with the logits
divided by each temperature T, on eval's fixed sample of a split's rows (validation unless --split says otherwise);
T = 1 is the model as it is.

    python scripts/perplexity_temperature.py [--corpus chitchat] [--rows 600]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import chat_options  # noqa: E402  (scripts/ is on sys.path when a script runs)

from nlp import data as D  # noqa: E402
from nlp.corpora import load_corpus  # noqa: E402
from nlp.evaluate import chat_rows  # noqa: E402
from nlp.serve import open_checkpoint  # noqa: E402
from nlp.tokenizer import PAD  # noqa: E402


@torch.no_grad()
def main() -> None:
    p = chat_options(__doc__, rows=600)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.9, 0.95, 1.0, 1.05, 1.1])
    a = p.parse_args()
    ck = open_checkpoint(a.checkpoint, "chat")
    ds, examples, _ = chat_rows(ck, load_corpus(a.corpus), a.split, a.rows, seed=0)
    nll = dict.fromkeys(a.temperatures, 0.0)
    tokens = 0
    for b in D.batches_of(examples, 64, None):
        logits = ck.model(b["src"], b["src_len"], b["tgt_in"])[0].float()
        keep = b["tgt_out"] != PAD
        for t in a.temperatures:
            logp = F.log_softmax(logits / t, -1).gather(-1, b["tgt_out"].unsqueeze(-1)).squeeze(-1)
            nll[t] += float(-(logp * keep).sum())
        tokens += int(keep.sum())
    words = D.word_count(ds["response"])  # as eval counts them
    print(json.dumps({"rows": len(examples), "tokens": tokens, "words": words,
                      "by_temperature": {str(t): {"token_perplexity": round(math.exp(v / tokens), 2),
                                                  "word_perplexity": round(math.exp(v / words), 1)}
                                         for t, v in nll.items()}}, indent=1))


if __name__ == "__main__":
    main()
