"""When should the chat show a training reply, and when say plainly that nothing fits? Judged on labelled rounds.

    python scripts/ssa_gate.py [--checkpoint checkpoints/chat] [--contexts scripts/ssa_contexts.jsonl]
                               [--rounds docs/ssa/round-1 docs/ssa/round-1b docs/ssa/round-1c]

For each context, the checkpoint's best retrieved reply (the app's default path with no gate) and the plain
reply are looked up in the labelled rounds (the same reply in the same conversation, as `blind_ssa.py carry`
does); each gate -- show the retrieved reply when its context's BM25 match, the ranker's score or the
similarity in meaning of its context turn to the message (nlp.ranking.context_similarity) clear thresholds,
the plain reply otherwise -- is scored by the SSA its replies would get, and the AUC of each signal for
telling sensible retrieved replies from the rest is printed. A reply no round labels is counted
and left out. docs/ssa/round-1c holds labels made for this: the shipped ranker's best replies to round 1's
contexts that rounds 1 and 1b did not show, mixed blind with 50 of round 1's labelled replies (decoys, whose
two labels measure the judge's consistency).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from blind_ssa import conversation, read_labels, replies_by_context  # noqa: E402

VALUE = {"sp": 1.0, "s": 0.5, "-": 0.0}  # a reply's share of SSA: (sensible + specific) / 2


def known_labels(rounds: list[Path]) -> dict[tuple[str, str], str]:
    """(conversation, reply) -> label over the rounds (a round's replies.txt and labels.txt)."""
    known = {}
    for folder in rounds:
        labels = read_labels(folder / "labels.txt")
        for rid, (context, text) in replies_by_context(folder).items():
            if rid in labels:
                known[(context.strip(), text.strip())] = labels[rid]
    return known


def auc(positive: list[float], negative: list[float]) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / max(len(pairs), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "chat"))
    p.add_argument("--contexts", default=str(ROOT / "scripts" / "ssa_contexts.jsonl"))
    p.add_argument("--rounds", nargs="+", default=[str(ROOT / "docs" / "ssa" / r)
                                                   for r in ("round-1", "round-1b", "round-1c")])
    a = p.parse_args()
    from nlp.decoding import make_generator
    from nlp.serve import chat_reply, default_decoding, open_checkpoint, open_index, plain_reply

    ck = open_checkpoint(a.checkpoint, task="chat")
    index, cfg = open_index(ck), default_decoding(ck)
    known = known_labels([Path(r) for r in a.rounds])
    rows, missing = [], 0
    for line in Path(a.contexts).read_text().splitlines():
        turns = json.loads(line)["context"]
        reply = chat_reply(ck, turns, cfg, make_generator(0), source="retrieved", index=index,
                           min_match=float("-inf"), min_similarity=float("-inf"))  # no gate: the best, always
        for _ in reply.stream:
            pass
        best = reply.candidates[0]
        label = known.get((conversation(turns).strip(), best["text"].strip()))
        plain = known.get((conversation(turns).strip(), plain_reply(turns[-1])))
        if label is None or plain is None:
            missing += 1
            continue
        rows.append({"score": best.get("score", 0.0), "match": best.get("match", 0.0),
                     "similarity": best.get("similarity", -1.0), "value": VALUE[label], "plain": VALUE[plain]})
    print(f"{len(rows)} contexts labelled, {missing} left out (a reply no round labels)")

    def ssa(min_match: float, min_score: float, min_similarity: float = -1.0) -> tuple[float, int]:
        shown = [r["match"] >= min_match and r["score"] >= min_score and r["similarity"] >= min_similarity
                 for r in rows]
        return sum(r["value"] if s else r["plain"] for r, s in zip(rows, shown)) / len(rows), sum(shown)
    for signal in ("match", "score", "similarity"):
        good = [r[signal] for r in rows if r["value"] >= 0.5]
        bad = [r[signal] for r in rows if r["value"] < 0.5]
        print(f"AUC of the {signal} for a sensible retrieved reply: {auc(good, bad):.3f}")
    print(f"always plain: SSA {ssa(float('inf'), 0)[0]:.3f}; always retrieved: {ssa(-1, -1e9)[0]:.3f}")
    print("BM25 match gate alone: " + ", ".join(f">= {m:g}: {ssa(m, -1e9)[0]:.3f} ({ssa(m, -1e9)[1]} shown)"
                                                 for m in (4, 5, 5.5, 6, 7, 8)))
    print("similarity gate alone: " + ", ".join(f">= {t:g}: {ssa(-1, -1e9, t)[0]:.3f} ({ssa(-1, -1e9, t)[1]} shown)"
                                                 for t in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85)))
    scores = sorted({round(r["score"], 1) for r in rows})
    grid = sorted(((*ssa(m, t), m, t) for m in (0, 4, 5, 5.5, 6, 7) for t in [-1e9, *scores]), reverse=True)
    print("best gates (SSA, shown, min match, min score): " + "; ".join(
        f"{s:.3f}, {n}, {m:g}, {t:.1f}" for s, n, m, t in grid[:5]))


if __name__ == "__main__":
    main()
