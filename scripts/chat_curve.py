"""Issue 11's bars against training time, from a chat model's training logs: at each validation, the wall-clock
spent so far, the reply loss, the word perplexity, the context gain and the next-reply accuracy.

Give the logs (checkpoint folders or log files) in training order, one per stage; the wall-clock adds up over
them. It is the sum of the training stretches each log records (each resumed run from its first line to its
last, validations and the steps a resume ran again included; not the pauses between runs). Each stage's
validation batches are its run's own fixed sample (`--eval-batches` batches of the validation rows, replies cut
at that run's `max_tgt_len`), rebuilt from the configuration its log records; a log written before training
logged the word perplexity gets it from the reply loss and those batches' tokens and words, counted as `eval`
counts them (a reply's whitespace-separated words plus one for its end).

    python scripts/chat_curve.py                                  # the shipped model's four stages
    python scripts/chat_curve.py runs/chat --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp import data as D  # noqa: E402
from nlp.checkpoint import read_train_log, train_log_file  # noqa: E402
from nlp.config import ChatTrainConfig  # noqa: E402
from nlp.tasks import ChatTask  # noqa: E402
from nlp.tokenizer import PAD, Tokenizer  # noqa: E402
from nlp.train import load_splits  # noqa: E402

SHIPPED = [ROOT / "checkpoints" / "chat" / f  # stages 1 to 4
           for f in ("base_train_log.jsonl", "whole_train_log.jsonl", "contrast_train_log.jsonl", "train_log.jsonl")]
STARTS = ("init_from", "start")  # the records a (resumed) run writes first


def wall_clock(file: Path) -> tuple[dict[float, float], float]:
    """Hours of training up to each raw log line (keyed by its time), and in all: the stretches before it in
    full, its own up to that line. A stretch begins with a run's first records and ends before the next run's."""
    hours, spent, begin, last, prev_event = {}, 0.0, None, None, None
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or not isinstance(r.get("time"), (int, float)):
            continue
        event = r.get("event")
        if begin is None or (event in STARTS and prev_event not in STARTS):  # a new stretch
            spent += 0.0 if begin is None else last - begin
            begin = r["time"]
        last, prev_event = r["time"], event
        hours[r["time"]] = (spent + last - begin) / 3600
    return hours, (spent + (last - begin if begin is not None else 0.0)) / 3600


def tokens_and_words(config: dict, tok: Tokenizer) -> tuple[int, int, int]:
    """(rows, tokens, words) of a run's validation batches, rebuilt as the run built them."""
    known = ChatTrainConfig.__dataclass_fields__  # a config.json written before the per-task configs holds more
    cfg = ChatTrainConfig(**{k: v for k, v in config.items() if k in known})
    task = ChatTask(cfg, device="cpu")
    task.val_data = task.examples(load_splits(cfg)["validation"], tok, train=False)
    rows = tokens = words = 0
    for batch in task.val_batches():
        rows += batch["tgt_out"].shape[0]
        tokens += int((batch["tgt_out"] != PAD).sum())
        words += D.target_words(tok, batch["tgt_out"])
    return rows, tokens, words


def curve(paths: list[Path], tok: Tokenizer) -> dict:
    stages, spent = [], 0.0
    for path in paths:
        file = train_log_file(path)
        records = read_train_log(file)
        starts = [r["config"] for r in records if r.get("event") == "start" and isinstance(r.get("config"), dict)]
        if not starts or starts[-1].get("task") != "chat":
            raise SystemExit(f"{file}: not the training log of a chat model")
        config = starts[-1]  # the validation batches depend on settings no resume changes
        hours, total = wall_clock(file)
        rows, tokens, words = tokens_and_words(config, tok)
        points = []
        for r in records:
            if not isinstance(r.get("val_loss"), (int, float)):
                continue
            logged = r.get("val_word_perplexity")
            if points and points[-1]["step"] == r["step"]:  # the run's closing validation repeats its last one
                points.pop()
            points.append({"step": r["step"], "hours": round(spent + hours[r["time"]], 2),
                           "val_loss": round(r["val_loss"], 4),
                           "word_perplexity": round(logged or math.exp(r["val_loss"] * tokens / words), 1),
                           "word_perplexity_logged": logged is not None,
                           "context_gain": round(r.get("val_context_gain", float("nan")), 3),
                           "next_reply_accuracy": round(r.get("val_rank_accuracy", float("nan")), 3)})
        shown = file.resolve().relative_to(ROOT) if file.resolve().is_relative_to(ROOT) else file
        stages.append({"log": str(shown), "init_from": config.get("init_from"), "max_tgt_len": config["max_tgt_len"],
                       "hours": round(total, 2), "validation_rows": rows, "tokens": tokens, "words": words,
                       "points": points})
        spent += total
    return {"stages": stages, "hours": round(spent, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="*", type=Path, default=SHIPPED, help="checkpoint folders or log files, in order")
    p.add_argument("--tokenizer", type=Path, default=ROOT / "checkpoints" / "tokenizer.model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = curve(args.logs, Tokenizer.load(args.tokenizer))
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for i, s in enumerate(out["stages"], 1):
        print(f"stage {i}: {s['log']} (from {s['init_from']}; replies cut at {s['max_tgt_len']} tokens), "
              f"{s['hours']:.2f} hours; {s['validation_rows']:,} validation rows, {s['tokens']:,} tokens, "
              f"{s['words']:,} words")
    print(f"in all {out['hours']:.2f} hours\n")
    print("| stage | steps | wall-clock (hours) | val reply loss | word perplexity | context gain "
          "| next-reply accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, s in enumerate(out["stages"], 1):
        for q in s["points"]:
            print(f"| {i} | {q['step']:,} | {q['hours']:.2f} | {q['val_loss']:.3f} | {q['word_perplexity']:.1f} | "
                  f"{q['context_gain']:.3f} | {q['next_reply_accuracy']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
