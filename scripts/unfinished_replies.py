"""The chat model's shown replies with and without cutting unfinished ones (GenerationConfig.cut_unfinished,
nlp.ranking.SentenceCut) on validation rows: F1, distinct-2, mean length in tokens, and the share of replies that
ran into a length limit (the trained one or the sampler's) and stop mid-sentence. The default decoding otherwise
(16 candidates ranked).

    python scripts/unfinished_replies.py [--corpus chitchat] [--rows 500] [--seeds 0 1]

The rows are eval's fixed sample (seed 0) of the split; each seed draws every reply once, both ways.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import chat_options  # noqa: E402  (scripts/ is on sys.path when a script runs)

from nlp import metrics as M  # noqa: E402
from nlp.corpora import load_corpus  # noqa: E402
from nlp.evaluate import chat_reply_ids, chat_rows  # noqa: E402
from nlp.serve import default_decoding, length_cut, open_checkpoint, ranking_weights  # noqa: E402


def main() -> None:
    a = chat_options(__doc__, rows=500, seeds=[0, 1]).parse_args()
    ck = open_checkpoint(a.checkpoint, "chat")
    gen, weights = default_decoding(ck), ranking_weights(ck)
    limit = length_cut(ck, gen.max_new_tokens)
    ds, examples, _ = chat_rows(ck, load_corpus(a.corpus), a.split, a.rows, 0)
    refs = list(ds["response"])
    out = {}
    for name, cut in (("cut (the default)", True), ("kept as drawn (--keep-unfinished)", False)):
        runs = []
        for seed in a.seeds:
            ids = chat_reply_ids(ck, [e.src for e in examples], dataclasses.replace(gen, cut_unfinished=cut),
                                 weights, seed)
            scores = M.dialogue_scores([ck.tokenizer.decode(r) for r in ids], refs)
            runs.append({"f1": scores["f1"], "distinct_2": scores["distinct_2"],
                         "mean_tokens": statistics.mean(map(len, ids)),
                         "unfinished": sum(map(limit.unfinished, ids)) / len(ids)})
        out[name] = {k: round(statistics.mean(r[k] for r in runs), 4) for k in runs[0]}
    print(json.dumps({"corpus": a.corpus, "split": a.split, "rows": len(examples), "seeds": a.seeds,
                      "unfinished: at least this many tokens, ending no sentence": limit.limit - limit.margin,
                      "mean over seeds": out}, indent=1))


if __name__ == "__main__":
    main()
