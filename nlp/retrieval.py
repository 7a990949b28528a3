"""Human replies as chat candidates: an index of the training dialogues' replies, found through the contexts
they answered.

    index = ReplyIndex.build(rows)                 # rows: {"context": [...turns], "response", "corpus"}
    index.save(Path("checkpoints/chat/index"))
    index = ReplyIndex.load(Path("checkpoints/chat/index"))
    for hit in index.search("do you like cooking?", k=20): hit.text, hit.corpus, hit.score

A user's message is matched against the last turn of every training context by BM25 (`bm25s`, Okapi BM25
over lower-cased words), and the replies those contexts got are the candidates; the chat's ranker then scores
them beside the replies the decoder writes (nlp.ranking). BM25 over the last turn is what a retrieval chatbot
does first; it matches rare words ("sushi", "promoted") more than TF-IDF's cosine does, which lets a short
training turn such as "kind of" win on shared filler.

The index is a folder of .npy arrays (bm25s's own layout for the BM25 matrix, never pickled) and
`index.json`, which names the corpora, counts the entries and holds the sha256 of every file, so a damaged or
half-copied index is refused with a one-line ReplyIndexError instead of answering from garbage. bm25s builds
it; serving reads its arrays memory-mapped and sums each query word's precomputed column, as bm25s's own
scoring does (tested equal to bm25s's retrieve): importing bm25s would import scipy, 13 MB more in the app's
server for one sum.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlp.errors import ReplyIndexError

FORMAT = 2  # 2 stores the matched context turns (CONTEXTS); an index of format 1 still serves without them
FORMATS = (1, 2)
MANIFEST = "index.json"
BM25_ARRAYS = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")  # bm25s's file names
VOCAB = "vocab.index.json"
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # bm25s.tokenize's default: words of two or more characters, lower-cased
TEXTS, STARTS, CORPUS = "texts.npy", "starts.npy", "corpus.npy"  # UTF-8 replies back to back; offsets; corpus id
CONTEXTS, CONTEXT_STARTS = "contexts.npy", "context_starts.npy"  # the context turn each reply answered, likewise
MAX_REPLY_WORDS = 30  # longer replies ramble past the point (what blind judges marked down), and cost memory
INDEX_DIR = "index"   # where a chat checkpoint keeps its index


def index_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / INDEX_DIR


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def usable_reply(text: str) -> bool:
    """A training reply worth offering: 1 to MAX_REPLY_WORDS words, no link, no control character."""
    words = len(text.split())
    return 1 <= words <= MAX_REPLY_WORDS and "http" not in text and not re.search(r"[\x00-\x08\x0b-\x1f]", text)


@dataclass(frozen=True)
class Hit:
    entry: int      # row of the index
    text: str       # the reply as its speaker wrote it
    corpus: str     # the corpus it comes from
    score: float    # BM25 of the user's message against the context it answered


class ReplyIndex:
    """The replies of the training dialogues, searchable by the context they answered."""

    def __init__(self, vocab: dict[str, int], bm25: tuple[np.ndarray, np.ndarray, np.ndarray], texts: np.ndarray,
                 starts: np.ndarray, corpus: np.ndarray, info: dict,
                 contexts: tuple[np.ndarray, np.ndarray] | None = None):
        self.vocab = vocab                          # word -> column of the BM25 matrix
        self.data, self.indices, self.indptr = bm25  # CSC: column w holds (entry, BM25 weight of w) pairs
        self.texts, self.starts, self.corpus_ids = texts, starts, corpus
        self.contexts = contexts                    # (UTF-8 blob, offsets) of the matched turns; None in format 1
        self.info = info
        self.corpora: list[str] = list(info["corpora"])

    def __len__(self) -> int:
        return len(self.starts) - 1

    def text(self, entry: int) -> str:
        return _utf8(self.texts, self.starts, entry)

    def context(self, entry: int) -> str | None:
        """The training context turn that `entry`'s reply answered (what the message was matched against);
        None for an index built before they were stored."""
        return None if self.contexts is None else _utf8(*self.contexts, entry)

    def corpus(self, entry: int) -> str:
        return self.corpora[int(self.corpus_ids[entry])]

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """The replies to the k training contexts whose last turn best matches `query` by BM25, best first;
        fewer (or none) when fewer contexts share a word with it."""
        columns = len(self.indptr) - 1  # bm25s's vocabulary ends with "", which has no column
        words = [self.vocab[w] for w in TOKEN.findall(query.lower()) if self.vocab.get(w, columns) < columns]
        if not words or k < 1:
            return []
        scores = np.zeros(len(self), dtype=np.float32)
        for w in words:  # a word said twice counts twice, as in bm25s
            start, end = self.indptr[w], self.indptr[w + 1]
            np.add.at(scores, self.indices[start:end], self.data[start:end])
        k = min(k, len(self))
        top = np.argpartition(scores, -k).take(indices=range(-k, 0))  # bm25s's own top-k, ties and all
        top = top[np.flip(np.argsort(scores[top]))]
        return [Hit(int(e), self.text(int(e)), self.corpus(int(e)), float(scores[e])) for e in top if scores[e] > 0]

    # building and storing ----------------------------------------------------
    @classmethod
    def build(cls, rows: Iterable[dict], sources: dict | None = None) -> ReplyIndex:
        """rows: {"context": [turns], "response", "corpus"}. Keeps each (last context turn, reply) pair once,
        and only `usable_reply` replies."""
        import bm25s

        corpora: list[str] = []
        keys, blob, starts, corpus = [], bytearray(), [0], []
        key_blob, key_starts = bytearray(), [0]
        seen: set[tuple[str, str]] = set()
        for r in rows:
            last = r["context"][-1] if r["context"] else ""
            reply = r["response"].strip()
            pair = (_norm(last), _norm(reply))
            if not pair[0] or pair in seen or not usable_reply(reply):
                continue
            seen.add(pair)
            if r["corpus"] not in corpora:
                corpora.append(r["corpus"])
            keys.append(last)
            key_blob += last.encode("utf-8")
            key_starts.append(len(key_blob))
            blob += reply.encode("utf-8")
            starts.append(len(blob))
            corpus.append(corpora.index(r["corpus"]))
        if not keys:
            raise ReplyIndexError("no usable replies to index: the corpora gave no context -> reply pairs")
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(keys, stopwords=None, show_progress=False), show_progress=False)
        info = {"format": FORMAT, "entries": len(keys), "corpora": corpora, "sources": sources or {},
                "per_corpus": {c: corpus.count(i) for i, c in enumerate(corpora)},
                "matched_on": "the last turn of each training context (BM25, bm25s)",
                "max_reply_words": MAX_REPLY_WORDS, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        bm25 = (retriever.scores["data"], retriever.scores["indices"], retriever.scores["indptr"])
        return cls(dict(retriever.vocab_dict), bm25, np.frombuffer(bytes(blob), dtype=np.uint8),
                   np.array(starts, dtype=np.int64), np.array(corpus, dtype=np.uint8), info,
                   (np.frombuffer(bytes(key_blob), dtype=np.uint8), np.array(key_starts, dtype=np.int64)))

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for name, array in zip(BM25_ARRAYS, (self.data, self.indices, self.indptr)):
            np.save(path / name, np.ascontiguousarray(array), allow_pickle=False)
        (path / VOCAB).write_text(json.dumps(self.vocab, separators=(",", ":")))
        arrays = [(TEXTS, self.texts), (STARTS, self.starts), (CORPUS, self.corpus_ids)]
        if self.contexts is not None:
            arrays += list(zip((CONTEXTS, CONTEXT_STARTS), self.contexts))
        for name, array in arrays:
            np.save(path / name, np.ascontiguousarray(array), allow_pickle=False)
        files = sorted([*BM25_ARRAYS, VOCAB, *(name for name, _ in arrays)])
        info = {**self.info, "format": FORMAT if self.contexts is not None else 1,
                "files": {f: _sha256(path / f) for f in files}}
        (path / MANIFEST).write_text(json.dumps(info, indent=1) + "\n")
        self.info = info

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> ReplyIndex:
        """The index in `path`; a missing, damaged or incomplete one is a ReplyIndexError saying which and how to
        rebuild it. With verify, every file's sha256 is checked against index.json first."""
        path = Path(path)
        rebuild = f"rebuild it with: python -m nlp index --checkpoint {path.parent}"
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ReplyIndexError(f"no reply index at {path} ({MANIFEST} is missing); {rebuild}")
        try:
            info = json.loads(manifest.read_text())
            files = info["files"]
            if info.get("format") not in FORMATS or not isinstance(files, dict):
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as e:
            raise ReplyIndexError(f"{manifest} is damaged ({e}); {rebuild}") from None
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise ReplyIndexError(f"{f} is missing; {rebuild}")
            if verify and _sha256(f) != digest:
                raise ReplyIndexError(f"{f} is damaged (its sha256 differs from {MANIFEST}); {rebuild}")
        try:
            vocab = json.loads((path / VOCAB).read_text())
            bm25 = tuple(np.load(path / n, mmap_mode="r", allow_pickle=False) for n in BM25_ARRAYS)
            arrays = [np.load(path / n, mmap_mode="r", allow_pickle=False) for n in (TEXTS, STARTS, CORPUS)]
            contexts = tuple(np.load(path / n, mmap_mode="r", allow_pickle=False)
                             for n in (CONTEXTS, CONTEXT_STARTS)) if info["format"] >= 2 else None
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise ReplyIndexError(f"{path}: the index cannot be read ({e}); {rebuild}") from None
        index = cls(vocab, bm25, *arrays, info, contexts)
        data, indices, indptr = bm25
        if len(index) != info.get("entries") or len(index.corpus_ids) != len(index) or \
                int(arrays[1][-1]) != len(arrays[0]) or len(data) != len(indices) or \
                int(indptr[-1]) != len(data) or (contexts is not None and (
                    len(contexts[1]) != len(index) + 1 or int(contexts[1][-1]) != len(contexts[0]))):
            raise ReplyIndexError(f"{path}: its arrays disagree with {MANIFEST}; {rebuild}")
        return index


def _utf8(blob: np.ndarray, starts: np.ndarray, entry: int) -> str:
    """Entry `entry` of texts stored back to back as UTF-8 bytes, with their offsets."""
    return bytes(blob[starts[entry]:starts[entry + 1]]).decode("utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_rows(corpora: list[str]) -> tuple[list[dict], dict]:
    """The training split's context -> reply pairs of each named dialogue corpus, with where each came from."""
    from nlp.corpora import load_corpus, source_of, task_of

    rows, sources = [], {}
    for name in corpora:
        dd = load_corpus(name)
        if task_of(dd) != "chat":
            raise ReplyIndexError(f"{name} is not a dialogue corpus (context -> response); index a chat corpus")
        sources[name] = source_of(name)
        train = dd["train"]
        rows += [{"context": c, "response": r, "corpus": name} for c, r in zip(train["context"], train["response"])]
    return rows, sources


def build_index(corpora: list[str], out: Path) -> ReplyIndex:
    """`python -m nlp index`: index the training replies of `corpora` into `out`."""
    rows, sources = training_rows(corpora)
    index = ReplyIndex.build(rows, sources)
    index.save(out)
    return index
