"""`python -m nlp train-ranker`: the chat ranker (nlp.ranker) fitted on the candidates it meets when serving.

For each sampled training row: its own reply first, then the replies the reply index finds for the training
contexts nearest to its last turn (never its own reply's text), two random replies, and (with `generated`)
replies the decoder samples for its context. The app's default path ranks training replies only, and a
ranker fitted against human candidates alone picked the true reply more often on validation (docs/chat.md),
so `generated` is 0 unless asked for. The frozen chat model gives each candidate's features once; the ranker learns, by
softmax cross-entropy over each row's candidates, to put the row's own reply first. Validation rows of the
same make choose the epoch and the weight of the word overlap beside the ranker.
"""

from __future__ import annotations

import random
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from nlp.checkpoint import Checkpoint
from nlp.corpora import load_corpus
from nlp.decoding import make_generator, sample_batch
from nlp.ranker import BATCH_OUTPUT_ROWS, OVERLAP_WEIGHTS, SCALARS, Ranker, features, save_ranker
from nlp.ranking import Overlap
from nlp.serve import default_decoding, sentence_cut


def hard_candidates(index, rows: list[dict], negatives: int, rng: random.Random, search_k: int = 40,
                    random_replies: int = 2) -> list[list[str]]:
    """For each row ({"context", "response"}): its own reply first, then `negatives` - `random_replies` replies
    that the index finds for the training contexts nearest to its last turn (never its own reply's text), then
    random ones up to `negatives` in all."""
    near = negatives - random_replies
    out = []
    for r in rows:
        own = " ".join(r["response"].lower().split())
        hard: list[str] = []
        for hit in index.search(r["context"][-1], k=search_k) if near > 0 else []:
            if " ".join(hit.text.lower().split()) != own and hit.text not in hard:
                hard.append(hit.text)
            if len(hard) == near:
                break
        while len(hard) < negatives:
            text = index.text(rng.randrange(len(index)))
            if " ".join(text.lower().split()) != own:
                hard.append(text)
        out.append([r["response"], *hard])
    return out


def generated_candidates(ck: Checkpoint, rows: list[dict], n: int, seed: int, batch: int = 64) -> list[list[str]]:
    """n replies the decoder samples for each row's context under the checkpoint's default decoding (plain
    sampling, cut back to a full sentence as the app cuts them)."""
    cfg = default_decoding(ck)
    cut = sentence_cut(ck, cfg)
    turns = ck.config.get("train", {}).get("context_turns", 3)
    max_src = ck.config.get("train", {}).get("max_src_len", 64)
    g = make_generator(seed)
    prompts = [ck.tokenizer.encode_turns(r["context"][-turns:], max_src) for r in rows for _ in range(n)]
    ids = [r for s in range(0, len(prompts), batch) for r in sample_batch(ck.model, prompts[s:s + batch], cfg, g)]
    texts = [ck.tokenizer.decode(cut(r) if cut else r) or "..." for r in ids]
    return [texts[i * n:(i + 1) * n] for i in range(len(rows))]


def candidate_features(ck: Checkpoint, rows: list[dict], candidates: list[list[str]], batch: int = 24,
                       log=print) -> tuple[Tensor, Tensor]:
    """(rows, candidates, F) features of each row's candidates, and (rows, candidates) their word overlap with
    the row's context."""
    overlap, tok = Overlap.of(ck.tokenizer), ck.tokenizer
    turns = ck.config.get("train", {}).get("context_turns", 3)
    max_src = ck.config.get("train", {}).get("max_src_len", 64)
    feats, shared, start = [], [], time.time()
    for s in range(0, len(rows), batch):
        ctx = [tok.encode_turns(r["context"][-turns:], max_src) for r in rows[s:s + batch]]
        cands = [tok.encode_batch(c) for c in candidates[s:s + batch]]
        feats.append(features(ck.model, ck.tokenizer, ctx, cands, amp=True, output_rows=BATCH_OUTPUT_ROWS)
                     .view(len(ctx), len(cands[0]), -1))
        shared.append(overlap([c for c, group in zip(ctx, cands) for _ in group],
                              [r for group in cands for r in group]).view(len(ctx), -1))
        if log and (s // batch) % 50 == 0:
            log(f"  features: {s + len(ctx):,}/{len(rows):,} rows, {time.time() - start:.0f} s")
    return torch.cat(feats), torch.cat(shared)


def hits_at_1(ranker: Ranker, feats: Tensor, shared: Tensor | None = None, overlap_weight: float = 0.0) -> float:
    """Share of rows whose own reply (candidate 0) scores above every other candidate."""
    with torch.no_grad():
        scores = ranker(feats)
    if shared is not None:
        scores = scores + overlap_weight * shared
    return float((scores[:, 1:].max(1).values < scores[:, 0]).float().mean())


def fit(ranker: Ranker, train: Tensor, val: Tensor, epochs: int, lr: float, seed: int, log=print) -> dict:
    """Train on (rows, candidates, len(SCALARS)) with the own reply at candidate 0 (softmax cross-entropy over
    each row's candidates); keep the epoch with the best validation Hits@1."""
    g = torch.Generator().manual_seed(seed)
    flat = ranker.pick(train).reshape(-1, len(ranker.features))
    ranker.mean.copy_(flat.mean(0))
    ranker.std.copy_(flat.std(0).clamp(min=1e-4))
    opt = torch.optim.AdamW(ranker.parameters(), lr=lr, weight_decay=1e-4)
    best, best_state, curve = -1.0, None, []
    target = torch.zeros(256, dtype=torch.long)
    for epoch in range(1, epochs + 1):
        ranker.train()
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for s in range(0, len(train), 256):
            b = train[order[s:s + 256]]
            loss = F.cross_entropy(ranker(b), target[:len(b)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        ranker.eval()
        h = hits_at_1(ranker, val)
        curve.append({"epoch": epoch, "train_loss": round(total / len(train), 4), "val_hits_at_1": round(h, 4)})
        if log:
            log(f"  epoch {epoch}: train loss {total / len(train):.4f}, validation Hits@1 {h:.3f}")
        if h > best:
            best, best_state = h, {k: v.clone() for k, v in ranker.state_dict().items()}
    ranker.load_state_dict(best_state)
    return {"curve": curve, "val_hits_at_1": best,
            "epoch": max(curve, key=lambda c: c["val_hits_at_1"])["epoch"]}


def sample_rows(corpora: list[str], split: str, n: int, rng: random.Random, opening_share: float = 0.0) \
        -> list[dict]:
    """n seeded rows of the named dialogue corpora's split, from all corpora together, each with a context;
    `opening_share` of them answer a one-turn context (a conversation's opening, as most of the app's are)."""
    rows = []
    for name in corpora:
        ds = load_corpus(name)[split]
        rows += [{"context": c, "response": r} for c, r in zip(ds["context"], ds["response"])
                 if c and c[-1].strip() and r.strip()]
    opening = [r for r in rows if len(r["context"]) == 1]
    later = [r for r in rows if len(r["context"]) > 1]
    k = min(round(n * opening_share), len(opening))
    return rng.sample(opening, k) + rng.sample(later, min(n - k, len(later)))


def train_ranker(ck: Checkpoint, index, corpora: list[str], rows: int = 4000, val_rows: int = 500,
                 val_corpus: str = "chitchat", negatives: int = 9, generated: int = 0, hidden: int = 64,
                 epochs: int = 30, lr: float = 1e-3, opening_share: float = 0.5, seed: int = 0, log=print) -> dict:
    """`python -m nlp train-ranker`: features of hard candidates for `rows` training rows and `val_rows`
    validation rows of `val_corpus` (Chit-Chat's by default: everyday conversations, what the app's users
    hold), a Ranker fitted on them and saved in the checkpoint. Returns what it measured."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    train_rows = sample_rows(corpora, "train", rows, rng, opening_share)
    val = sample_rows([val_corpus], "validation", val_rows, rng, opening_share)
    log(f"{len(train_rows):,} training rows ({', '.join(corpora)}), {len(val):,} validation rows ({val_corpus}), "
        f"{negatives} human distractors and {generated} sampled replies each")

    def candidates(rows: list[dict], seed: int) -> list[list[str]]:
        human = hard_candidates(index, rows, negatives, rng)
        if not generated:
            return human
        return [h + g for h, g in zip(human, generated_candidates(ck, rows, generated, seed))]
    train_feats, _ = candidate_features(ck, train_rows, candidates(train_rows, seed), log=log)
    val_feats, val_overlap = candidate_features(ck, val, candidates(val, seed + 1), log=log)
    ranker = Ranker(SCALARS, hidden)
    result = fit(ranker, train_feats, val_feats, epochs, lr, seed, log)
    # the weight of the word overlap beside the ranker: the best on the validation rows (the first of equals)
    grid = {w: hits_at_1(ranker, val_feats, val_overlap, w) for w in OVERLAP_WEIGHTS}
    ranker.overlap_weight = max(grid, key=lambda w: (round(grid[w], 4), -w))
    log("  overlap weight: " + ", ".join(f"{w:g} -> {h:.3f}" for w, h in grid.items()))
    info = {"trained_on": {"corpora": corpora, "rows": len(train_rows), "validation_corpus": val_corpus,
                           "validation_rows": len(val), "distractors": negatives, "generated": generated,
                           "opening_share": opening_share,
                           "seed": seed, "epochs": epochs, "lr": lr},
            "val_hits_at_1": round(result["val_hits_at_1"], 4),
            "chance": round(1 / (negatives + generated + 1), 4),
            "overlap_grid": {str(w): round(h, 4) for w, h in grid.items()},
            "epoch": result["epoch"], "curve": result["curve"], "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save_ranker(ck, ranker, info)
    return info

