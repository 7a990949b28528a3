"""Corpus rows -> token ids -> padded batches, for each task.

  lm         one long stream (each line + EOS), cut into B parallel columns; windows of `bptt` tokens are read
             left to right so the recurrent state can be carried from one window to the next (truncated BPTT)
  chat       (context turns joined by <sep>, BOS + response, response + EOS)
  sentiment  (text ids, label, rating)
Variable-length examples are bucketed: sorted by length inside large shuffled chunks, so a batch holds
similar lengths (little padding) while the order of batches stays random.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nlp.errors import CorpusError
from nlp.tokenizer import BOS, EOS, PAD, Tokenizer, join_turns

if TYPE_CHECKING:
    from datasets import Dataset


# --------------------------------------------------------------------------- language model
def lm_stream(ds: Dataset, tok: Tokenizer) -> Tensor:
    """All lines as one id stream, each line followed by EOS (the end-of-line marker the WikiText count uses)."""
    out: list[int] = []
    for ids in tok.encode_batch(list(ds["text"])):
        out.extend(ids)
        out.append(EOS)
    return torch.tensor(out, dtype=torch.long)


def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """(N,) -> (B, N // B): column b holds one contiguous stretch of the text."""
    n = stream.numel() // batch_size
    if n < 2:
        raise CorpusError(f"too little text ({stream.numel()} tokens) for batch size {batch_size}")
    return stream[: n * batch_size].view(batch_size, n)


def lm_windows(data: Tensor, bptt: int) -> list[tuple[Tensor, Tensor]]:
    """Consecutive (input, target) windows; the target is the input shifted by one token."""
    n = data.shape[1] - 1  # the last token is only ever a target
    return [(data[:, i:i + min(bptt, n - i)], data[:, i + 1:i + 1 + min(bptt, n - i)]) for i in range(0, n, bptt)]


# --------------------------------------------------------------------------- examples of varying length
@dataclass
class ChatExample:
    src: list[int]
    tgt: list[int]  # response ids, without BOS/EOS


@dataclass
class SentimentExample:
    ids: list[int]
    label: int
    rating: float


def chat_examples(ds: Dataset, tok: Tokenizer, context_turns: int, max_src_len: int,
                  max_tgt_len: int) -> list[ChatExample]:
    contexts = [c[-context_turns:] for c in ds["context"]]
    texts = sorted({t for c in contexts for t in c} | set(ds["response"]))
    ids = dict(zip(texts, tok.encode_batch(texts)))
    out = []
    for ctx, resp in zip(contexts, ds["response"]):
        src = join_turns([ids[t] for t in ctx], max_src_len)
        tgt = ids[resp][: max_tgt_len - 1]
        if src and tgt:
            out.append(ChatExample(src, tgt))
    return out


def word_count(texts: Iterable[str]) -> int:
    """Words as word perplexities count them: each text's whitespace-separated words plus one for its end (a
    WikiText line's end-of-line marker, a reply's end)."""
    return sum(len(t.split()) + 1 for t in texts)


def target_words(tok: Tokenizer, tgt_out: Tensor) -> int:
    """`word_count` of a batch of target rows (the padding and the end token left out of the text)."""
    return word_count(tok.decode([i for i in row if i not in (PAD, EOS)]) for row in tgt_out.tolist())


NO_OPINION = 2  # a sentiment row's label when it states no opinion: trained towards equal label probabilities


def sentiment_examples(ds: Dataset, tok: Tokenizer, max_len: int) -> list[SentimentExample]:
    return [SentimentExample(ids[:max_len] or [EOS], int(label), float(rating))
            for ids, label, rating in zip(tok.encode_batch(list(ds["text"])), ds["label"], ds["rating"])]


def bucket_batches(lengths: list[int], batch_size: int, rng: random.Random, chunk: int = 50) -> list[list[int]]:
    """Index batches of similar length, in random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * chunk):
        part = sorted(order[start:start + batch_size * chunk], key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def pad(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded (B, T) ids and their lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths


def collate_chat(examples: list[ChatExample]) -> dict[str, Tensor]:
    src, src_len = pad([e.src for e in examples])
    tgt_in, _ = pad([[BOS] + e.tgt for e in examples])
    tgt_out, _ = pad([e.tgt + [EOS] for e in examples])
    reply, reply_len = pad([e.tgt for e in examples])  # the reply alone, for the next-reply head
    return {"src": src, "src_len": src_len, "tgt_in": tgt_in, "tgt_out": tgt_out, "reply": reply,
            "reply_len": reply_len}


def collate_sentiment(examples: list[SentimentExample]) -> dict[str, Tensor]:
    ids, lengths = pad([e.ids for e in examples])
    return {"ids": ids, "lengths": lengths, "label": torch.tensor([e.label for e in examples]),
            "rating": torch.tensor([e.rating for e in examples], dtype=torch.float)}


def example_length(e) -> int:
    return len(e.src) + len(e.tgt) if isinstance(e, ChatExample) else len(e.ids)


def batches_of(examples: list, batch_size: int, rng: random.Random | None) -> list[dict[str, Tensor]]:
    """Collated batches: bucketed and shuffled when rng is given, in length order (for evaluation) if not."""
    collate = collate_chat if examples and isinstance(examples[0], ChatExample) else collate_sentiment
    lengths = [example_length(e) for e in examples]
    if rng is None:
        order = sorted(range(len(examples)), key=lambda i: lengths[i])
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        groups = bucket_batches(lengths, batch_size, rng)
    return [collate([examples[i] for i in g]) for g in groups]
