"""Beam search: the n best continuations of a prompt (or replies to a context) by length-normalised
log-probability, under the same score adjustments as sampling (repetition penalty, banned n-grams, minimum
length: nlp.decoding.ScoreAdjuster). Works with any model of the decoding interface (`start`/`step`, a state
of tensors with the batch first, which it reorders as beams are kept)."""

from __future__ import annotations

import math

import torch

from nlp.decoding import GenerationConfig, prime, prompt_adjuster, reorder
from nlp.tokenizer import EOS


@torch.no_grad()
def beam_search(model, prompt_ids: list[int], cfg: GenerationConfig) -> list[tuple[list[int], float]]:
    """n-best (token ids without EOS, length-normalised log-prob), best first."""
    model.eval()
    K = cfg.num_beams
    log_probs, state = prime(model, prompt_ids)
    adjuster = prompt_adjuster(model, prompt_ids, cfg, log_probs)
    beams: list[list[int]] = [[]]
    scores = torch.zeros(1, device=log_probs.device)
    finished: list[tuple[list[int], float]] = []

    def normalised(score: float, length: int) -> float:
        return score / (max(length, 1) ** cfg.length_penalty)

    for step in range(cfg.max_new_tokens):
        lp = adjuster(log_probs)
        cand = (scores.unsqueeze(1) + lp).view(-1)
        top = torch.topk(cand, min(2 * K, cand.numel()))
        keep_rows, keep_toks, keep_scores = [], [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            if math.isinf(score):
                break
            row, tok = divmod(flat, lp.shape[1])
            if tok == EOS:
                finished.append((beams[row], normalised(score, len(beams[row]) + 1)))
            else:
                keep_rows.append(row)
                keep_toks.append(tok)
                keep_scores.append(score)
            if len(keep_rows) == K:
                break
        if len(finished) >= K or not keep_rows:
            break
        idx = torch.tensor(keep_rows, device=scores.device)
        beams = [beams[r] + [t] for r, t in zip(keep_rows, keep_toks)]
        scores = torch.tensor(keep_scores, device=scores.device)
        if step == cfg.max_new_tokens - 1:
            break
        adjuster.advance(keep_rows, keep_toks)
        log_probs, state = model.step(torch.tensor(keep_toks, device=idx.device), reorder(state, idx))
    if len(finished) < K:  # out of steps: unfinished beams compete too
        finished += [(b, normalised(float(s), len(b))) for b, s in zip(beams, scores.tolist())]
    finished.sort(key=lambda x: -x[1])
    return finished[:cfg.num_return_sequences]
