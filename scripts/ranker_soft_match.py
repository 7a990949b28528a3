"""An experiment for the chat ranker: does a soft word match under the chat model's own embeddings help it
pick the true reply? (docs/chat.md, "Next for the ranker")

    python scripts/ranker_soft_match.py [--train-rows 800] [--val-rows 300]

Training rows (Chit-Chat + Cornell train, half openings) each get their own reply, 5 replies of the index's
nearest contexts and 4 random ones; validation rows (Chit-Chat validation) are scored twice, against 19 random
replies and against 19 of the index's nearest-context replies. Every candidate gets nlp.ranker's features,
the two soft-match ones among them (nlp.ranker.soft_match). A Ranker MLP is fitted with and without the soft
match (two seeds, the epoch chosen on the random-distractor validation rows) and Hits@1 printed beside each
feature alone and the word overlap alone.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nlp.ranker import SCALARS, Ranker  # noqa: E402
from nlp.serve import open_checkpoint, open_index  # noqa: E402
from nlp.train_ranker import candidate_features, fit, hard_candidates, hits_at_1, sample_rows  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/chat")
    p.add_argument("--train-rows", type=int, default=800)
    p.add_argument("--val-rows", type=int, default=300)
    a = p.parse_args()
    ck = open_checkpoint(a.checkpoint, task="chat", ranker=False)
    index = open_index(ck)
    train = sample_rows(["chitchat", "cornell"], "train", a.train_rows, random.Random(7), 0.5)
    val = sample_rows(["chitchat"], "validation", a.val_rows, random.Random(99), 0.5)
    data = {}
    for name, rows, near, far, seed in [("train", train, 5, 4, 1), ("random", val, 0, 19, 2), ("hard", val, 19, 0, 3)]:
        cands = hard_candidates(index, rows, near + far, random.Random(seed), search_k=60, random_replies=far)
        data[name] = candidate_features(ck, rows, cands, log=None)

    def first(scores: torch.Tensor) -> float:
        return float((scores[:, 1:].max(1).values < scores[:, 0]).float().mean())
    print("Hits@1 of 20 on the validation rows: random / hard distractors")
    print(f"  word overlap alone                 {first(data['random'][1]):.3f} / {first(data['hard'][1]):.3f}")
    for i, name in enumerate(SCALARS):
        print(f"  {name:34} {first(data['random'][0][..., i]):.3f} / {first(data['hard'][0][..., i]):.3f}")
    soft = [n for n in SCALARS if n.startswith("soft_")]
    for label, names in [("ranker without the soft match", [n for n in SCALARS if n not in soft]),
                         ("ranker with the soft match", SCALARS)]:
        for seed in (0, 1):
            torch.manual_seed(seed)
            ranker = Ranker(names, 64)
            fit(ranker, data["train"][0], data["random"][0], 30, 1e-3, seed, log=None)
            print(f"  {label}, seed {seed}: {hits_at_1(ranker, data['random'][0]):.3f} / "
                  f"{hits_at_1(ranker, data['hard'][0]):.3f}")


if __name__ == "__main__":
    main()
