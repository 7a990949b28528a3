"""What the overlap term of the chat ranking (nlp.ranking.Overlap) does to the shown replies, on validation rows:
for each overlap weight, F1, distinct-2, the reply's mean overlap with its context, the share of echoes
(replies of 3 words or more whose words are at least 80% the user's last turn's) and of repetitive replies (one
content word 3 times or more: nlp.metrics.repeats_a_word), beside the reference replies'; and the echoes and
repetitive replies themselves at the checkpoint's own weight, first seed, to read. With --reply-once, each
weight is tried again with the reply's pieces counted once (Overlap's reply_once), on the same candidates.
The default decoding otherwise (16 candidates ranked, the checkpoint's other weights).

    python scripts/overlap_weight.py [--corpus chitchat] [--rows 500] [--seeds 0 1 2] [--weights 0 8 16 32 64]
                                     [--reply-once]

The rows are eval's fixed sample (seed 0) of the split. Each seed samples every row's candidates once; every
weight then picks among the same candidates, so the weights differ only in the ranking.
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
from nlp import ranking as R  # noqa: E402
from nlp.corpora import load_corpus  # noqa: E402
from nlp.decoding import make_generator  # noqa: E402
from nlp.evaluate import chat_rows  # noqa: E402
from nlp.serve import default_decoding, open_checkpoint, ranking_weights, sentence_cut  # noqa: E402


def echoes(reply: str, last_turn: str) -> bool:
    """Whether a reply mostly repeats the user's last turn: 3 words or more, at least 80% of them in it."""
    words, said = M.normalize_answer(reply).split(), set(M.normalize_answer(last_turn).split())
    return len(words) >= 3 and sum(w in said for w in words) >= 0.8 * len(words)


def main() -> None:
    p = chat_options(__doc__, rows=500, seeds=[0, 1, 2])
    p.add_argument("--weights", type=float, nargs="+", default=[0, 8, 16, 32, 64])
    p.add_argument("--reply-once", action="store_true", help="also count each reply piece once")
    a = p.parse_args()
    ck = open_checkpoint(a.checkpoint, "chat")
    gen = default_decoding(ck)
    weights = dataclasses.replace(ranking_weights(ck), overlap=0.0)  # the candidates' scores without the term
    overlap = R.Overlap.of(ck.tokenizer)
    variants = {"": overlap} | ({" once": R.Overlap(overlap.piece_weights, reply_once=True)} if a.reply_once else {})
    ds, examples, contexts = chat_rows(ck, load_corpus(a.corpus), a.split, a.rows, 0)
    prompts, refs = [e.src for e in examples], list(ds["response"])
    said = [c[-1] for c in contexts]
    runs: dict[str, list[dict]] = {}
    shown = {}  # at the checkpoint's own weight, first seed: what the measures count, to read
    for seed in a.seeds:
        ranked = R.sample_and_rank(ck.model, prompts, gen, weights, make_generator(seed), sentence_cut(ck, gen))
        for name, ov_of in variants.items():
            shared = [ov_of([p] * len(cands), [c["ids"] for c in cands]).tolist() for p, cands in zip(prompts, ranked)]
            for w in a.weights:
                best = [max(range(len(cands)), key=lambda j: cands[j]["score"] + w * ov[j])
                        for cands, ov in zip(ranked, shared)]
                replies = [ck.tokenizer.decode(cands[j]["ids"]) for cands, j in zip(ranked, best)]
                scores = M.dialogue_scores(replies, refs)
                runs.setdefault(f"overlap weight {w:g}{name}", []).append(
                    {"f1": scores["f1"], "distinct_2": scores["distinct_2"],
                     "overlap": statistics.mean(ov[j] for ov, j in zip(shared, best)),
                     "echoes": sum(map(echoes, replies, said)) / len(replies),
                     "repetitive": scores["repetitive_replies"]})
                if seed == a.seeds[0] and w == ranking_weights(ck).overlap:
                    shown[f"echoes{name}"] = [{"said": t, "reply": r} for r, t in zip(replies, said) if echoes(r, t)]
                    shown[f"repetitive{name}"] = [{"said": t, "reply": r} for r, t in zip(replies, said)
                                                  if M.repeats_a_word(r)]
    out = {key: {k: round(statistics.mean(r[k] for r in rs), 4) for k in rs[0]} for key, rs in runs.items()}
    reference = {"overlap": round(statistics.mean(overlap(prompts, [e.tgt for e in examples]).tolist()), 4),
                 "echoes": round(sum(map(echoes, refs, said)) / len(refs), 4),
                 "repetitive": round(sum(map(M.repeats_a_word, refs)) / len(refs), 4)}
    print(json.dumps({"corpus": a.corpus, "split": a.split, "rows": len(examples), "seeds": a.seeds,
                      "checkpoint weights": ranking_weights(ck).as_dict(), "mean over seeds": out,
                      "reference replies": reference, "at the checkpoint's weight, first seed": shown}, indent=1))


if __name__ == "__main__":
    main()
