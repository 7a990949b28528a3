"""When should the chat show a training reply, which one, and when say plainly that nothing fits? Judged on
labelled rounds.

    python scripts/ssa_gate.py [--checkpoint checkpoints/chat]
                               [--contexts scripts/ssa_contexts.jsonl scripts/ssa_contexts_round2.jsonl]
                               [--rounds docs/ssa/round-*] [--blind DIR --label among:0.75 ... --decoys 30]

For each context, the checkpoint's retrieved candidates are ranked (the app's default path with no gate), each
with the similarity in meaning of the context turn it answered to the message (nlp.ranking.context_similarity).
Two kinds of policy choose the reply, each at several thresholds t:
  top:t     the ranked-first candidate when its similarity is >= t, else the plain reply (the app's gate)
  among:t   the ranked-first of the candidates whose similarity is >= t, else the plain reply
Each policy's replies are looked up in the labelled rounds (the same reply in the same conversation, as
`blind_ssa.py carry` does) and scored by SSA, per context file; the AUC of each signal for telling sensible
ranked-first replies from the rest is printed. A reply no round labels is counted and left out, so a policy's
SSA is over its labelled contexts only: --blind writes the unlabelled replies of the --label policies to a new
folder, mixed with --decoys replies the rounds already label (whose two labels measure the judge's
consistency), for a judge to label blind; its key.json says which were which.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from blind_ssa import PROTOCOL, VALUE, conversation, known_labels  # noqa: E402

THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9)


def auc(positive: list[float], negative: list[float]) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / max(len(pairs), 1)


def pick(policy: str, candidates: list[dict]) -> dict | None:
    """The candidate `policy` ("top:0.75", "among:0.8") shows, or None for the plain reply."""
    kind, t = policy.split(":")
    fitting = [c for c in candidates if c.get("similarity", -1.0) >= float(t)]
    if kind == "top":
        return candidates[0] if candidates and fitting and fitting[0] is candidates[0] else None
    if kind == "among":
        return fitting[0] if fitting else None
    raise SystemExit(f"unknown policy {policy!r}: top:T or among:T")


def ranked(contexts: list[list[str]], checkpoint: str) -> list[list[dict]]:
    """Every context's retrieved candidates, ranked, with their similarity (the app's path, no gate)."""
    from nlp.decoding import make_generator
    from nlp.serve import chat_reply, default_decoding, open_checkpoint, open_index

    ck = open_checkpoint(checkpoint, task="chat")
    index, cfg = open_index(ck), default_decoding(ck)
    out = []
    for turns in contexts:
        reply = chat_reply(ck, turns, cfg, make_generator(0), source="retrieved", index=index,
                           min_match=float("-inf"), min_similarity=float("-inf"))  # no gate: all, ranked
        for _ in reply.stream:
            pass
        out.append([c for c in reply.candidates if c["source"] == "retrieved"])
    return out


def write_blind(folder: Path, new: dict[tuple[str, str], None], known: dict[tuple[str, str], str], decoys: int,
                seed: int) -> None:
    """The unlabelled (conversation, reply) pairs and `decoys` labelled ones, shuffled, for a judge."""
    rng = random.Random(seed)
    old = rng.sample(sorted(known), min(decoys, len(known)))
    items = [(pair, "new", None) for pair in new] + [(pair, "decoy", known[pair]) for pair in old]
    rng.shuffle(items)
    key, blocks = {}, []
    for n, ((context, text), kind, label) in enumerate(items, 1):
        rid = secrets.token_hex(3)
        key[rid] = {"kind": kind, "old_label": label, "text": text, "context": context}
        blocks.append(f"=== {n}\n{context}\n    [{rid}] {text}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "replies.txt").write_text(PROTOCOL + "\n" + "\n\n".join(blocks) + "\n")
    (folder / "key.json").write_text(json.dumps(key, indent=1) + "\n")
    (folder / "labels.txt").write_text("".join(f"{rid} \n" for rid in key))
    print(f"{len(new)} unlabelled replies and {len(old)} decoys in {folder}/replies.txt", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "chat"))
    p.add_argument("--contexts", nargs="+", default=[str(ROOT / "scripts" / f) for f in
                                                     ("ssa_contexts.jsonl", "ssa_contexts_round2.jsonl")])
    p.add_argument("--rounds", nargs="+", default=[str(d) for d in sorted((ROOT / "docs" / "ssa").iterdir())])
    p.add_argument("--blind", help="write the --label policies' unlabelled replies here, for a judge")
    p.add_argument("--label", nargs="*", default=[], help="policies whose unlabelled replies --blind writes")
    p.add_argument("--decoys", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from nlp.serve import plain_reply

    known = known_labels([Path(r) for r in a.rounds])
    policies = [f"{kind}:{t}" for kind in ("top", "among") for t in THRESHOLDS]
    unlabelled: dict[tuple[str, str], None] = {}
    for file in a.contexts:
        contexts = [json.loads(line)["context"] for line in Path(file).read_text().splitlines() if line.strip()]
        candidates = ranked(contexts, a.checkpoint)
        convs = [conversation(turns).strip() for turns in contexts]
        plains = [known.get((conv, plain_reply(turns[-1]))) for conv, turns in zip(convs, contexts)]
        print(f"\n{Path(file).name}: {len(contexts)} contexts; plain replies labelled for "
              f"{sum(v is not None for v in plains)}")
        tops = [(c[0], known.get((conv, c[0]["text"].strip()))) for conv, c in zip(convs, candidates) if c]
        for signal in ("similarity", "match", "score"):
            good = [c.get(signal, -1.0) for c, label in tops if label in ("sp", "s")]
            bad = [c.get(signal, -1.0) for c, label in tops if label == "-"]
            print(f"  AUC of the ranked-first reply's {signal} for sensible: {auc(good, bad):.3f} "
                  f"({len(good)} sensible, {len(bad)} not)")
        print("  policy        SSA    labelled  shown  sp-shown  unlabelled")
        for policy in ["plain", *policies]:
            total = n = shown = good = missing = 0
            for conv, cands, plain in zip(convs, candidates, plains):
                chosen = None if policy == "plain" else pick(policy, cands)
                label = plain if chosen is None else known.get((conv, chosen["text"].strip()))
                if label is None:
                    missing += 1
                    if chosen is not None and policy in a.label:
                        unlabelled[(conv, chosen["text"].strip())] = None
                    continue
                total, n = total + VALUE[label], n + 1
                shown += chosen is not None
                good += chosen is not None and label == "sp"
            print(f"  {policy:12s} {total / max(n, 1):.3f}  {n:8d}  {shown:5d}  {good:8d}  {missing:10d}")
    if a.blind:
        write_blind(Path(a.blind), unlabelled, known, a.decoys, a.seed)


if __name__ == "__main__":
    main()
