"""`python -m nlp <command>`: corpora, tokenizer, train, eval, generate, chat, sentiment.

    python -m nlp corpora list
    python -m nlp corpora show wikitext2
    python -m nlp tokenizer train --corpus wikitext2 --corpus chitchat --vocab-size 8000 --out tok.model
    python -m nlp train --config configs/lm.toml
    python -m nlp eval --checkpoint checkpoints/lm --corpus wikitext2 --split test --json
    python -m nlp generate --checkpoint checkpoints/lm --prompt "The history of" --seed 1
    python -m nlp index --checkpoint checkpoints/chat
    python -m nlp train-ranker --checkpoint checkpoints/chat
    python -m nlp chat --checkpoint checkpoints/chat
    python -m nlp sentiment --checkpoint checkpoints/sentiment "What a wonderful film."
"""

from __future__ import annotations

import argparse
import os
import sys

from nlp.commands import (
    cmd_chat,
    cmd_corpora,
    cmd_eval,
    cmd_generate,
    cmd_index,
    cmd_probe_sentiment,
    cmd_sentiment,
    cmd_tokenizer,
    cmd_train_ranker,
    cmd_tune_chat,
    cmd_tune_sentiment,
)

# only the error types at import time: `--help` and argument errors never wait for torch or datasets
from nlp.errors import (
    CheckpointError,
    ConfigError,
    CorpusError,
    GenerationError,
    OneLineParser,
    TokenizerError,
    TrainingError,
)


def at_least(minimum: int):
    """argparse type: an integer >= minimum, or a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Decoding flags; each one left out takes the checkpoint's default (nlp.serve.default_decoding: the app's)."""
    g = p.add_argument_group("decoding (each defaults to the app's setting for the checkpoint)")
    g.add_argument("--strategy", choices=["greedy", "sample", "beam"], help="how to pick each token")
    g.add_argument("--temperature", type=float, help="lower = more predictable, higher = more varied; 0 = greedy")
    g.add_argument("--top-k", type=at_least(0), help="sample among the k most likely tokens; 0 = all")
    g.add_argument("--top-p", type=float, help="sample among the most likely tokens that together reach p")
    g.add_argument("--min-p", type=float, help="drop tokens less likely than min-p x the most likely one (0 = off)")
    g.add_argument("--repetition-penalty", type=float, help="> 1 discourages tokens already in the text (1 = off)")
    g.add_argument("--no-repeat-ngram", type=at_least(0), dest="no_repeat_ngram_size",
                   help="never repeat an n-gram of this size (0 = off)")
    g.add_argument("--num-beams", type=at_least(1), help="beams for --strategy beam")
    g.add_argument("--length-penalty", type=float, help="beam score = log-prob / length ** this")
    g.add_argument("--max-new-tokens", type=at_least(1), help="stop after this many tokens")
    g.add_argument("--min-new-tokens", type=at_least(0), help="no end of text before this many tokens (1: never empty)")
    g.add_argument("--num-candidates", type=at_least(1),
                   help="chat: sample this many replies and keep the best by the ranking score (1 = plain sampling)")
    g.add_argument("--keep-unfinished", dest="cut_unfinished", action="store_const", const=False, default=None,
                   help="chat: show a reply that ran into the model's trained length as it is, even mid-sentence "
                        "(default: cut back to its last full sentence)")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling (default: random)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["train"]:  # the trainer owns its (generated) options
        from nlp.train import run
        return _guard(lambda: run(argv[1:]))
    a = build_parser().parse_args(argv)
    return _guard(lambda: a.fn(a))


def command(sub, name: str, fn, checkpoint: str | None = None, **kw) -> argparse.ArgumentParser:
    """Subcommand `name`, run by `fn`; with `checkpoint` (the kind of model, "" for any) it requires
    --checkpoint, the folder of a trained model."""
    s = sub.add_parser(name, **kw)
    if checkpoint is not None:
        s.add_argument("--checkpoint", required=True, help=f"{checkpoint} checkpoint folder".lstrip())
    s.set_defaults(fn=fn)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m nlp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = command(sub, "corpora", cmd_corpora, help="list the named corpora, or show one's splits and examples")
    c.add_argument("action", choices=["list", "show"])
    c.add_argument("name", nargs="?", help="corpus name, hf:NAME or a file (for show)")
    c.add_argument("--n", type=at_least(1), default=3, help="examples to print")
    c.add_argument("--json", action="store_true", help="print JSON")

    t = command(sub, "tokenizer", cmd_tokenizer, help="train the SentencePiece tokenizer")
    t.add_argument("action", choices=["train"])
    t.add_argument("--corpus", action="append", required=True, help="a corpus to learn from (repeatable)")
    t.add_argument("--vocab-size", type=at_least(8), default=8000, help="number of pieces (default 8000)")
    t.add_argument("--input-sentence-size", type=at_least(1), default=2_000_000, help="sentences sampled for training")
    t.add_argument("--out", required=True, help="where to write tokenizer.model")

    sub.add_parser("train", help="train a model (python -m nlp train --help)")

    e = command(sub, "eval", cmd_eval, checkpoint="", help="metrics and baselines of a checkpoint on a corpus "
                "split")
    e.add_argument("--corpus", required=True, help="corpus name, hf:NAME or file")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"], help="which split")
    e.add_argument("--max-examples", type=at_least(0), default=0, help="evaluate on this many rows (0 = all)")
    e.add_argument("--json", action="store_true", help="print the whole result as JSON")
    e.add_argument("--output", help="also write the JSON result to this file")
    e.add_argument("--record", action="store_true", help="store the result in CHECKPOINT/metrics.json (what the "
                   "Models page and the README show) under CORPUS:SPLIT, with --max-examples recorded beside it")
    e.add_argument("--tag", default="", help="with --record: store it as CORPUS:SPLIT:TAG (e.g. the decoding), "
                   "beside the untagged one")
    add_generation_args(e)

    tc = command(sub, "tune-chat", cmd_tune_chat, checkpoint="chat", help="choose a chat checkpoint's ranking "
                 "weights, temperature and candidate count on validation data")
    tc.add_argument("--corpus", default="chitchat", help="dialogue corpus (default chitchat)")
    tc.add_argument("--split", default="validation", choices=["train", "validation"], help="never test")
    tc.add_argument("--max-examples", type=at_least(2), default=1000, help="rows for Hits@1 (default 1000)")
    tc.add_argument("--seed", type=int, default=0, help="seed for the row sample and the candidates")
    tc.add_argument("--write", action="store_true", help="store the choice as the checkpoint's default decoding")

    ts = command(sub, "tune-sentiment", cmd_tune_sentiment, checkpoint="sentiment", help="choose when a "
                 "sentiment checkpoint says 'neutral / mixed', on validation data")
    ts.add_argument("--corpus", nargs="+", default=["vader-movies", "vader-tweets", "vader-amazon", "vader-nyt"],
                    help="rated corpora, pooled (default: the four VADER domains)")
    ts.add_argument("--split", default="validation", choices=["train", "validation"], help="never test")
    ts.add_argument("--write", action="store_true", help="store the rule in the checkpoint's config.json")

    ix = command(sub, "index", cmd_index, checkpoint="chat", help="build a chat checkpoint's reply index: the "
                 "training replies, found by the contexts they answered (CHECKPOINT/index)")
    ix.add_argument("--corpus", action="append", help="a dialogue corpus to index (repeatable; default: the "
                    "corpora the model was trained on)")

    tr = command(sub, "train-ranker", cmd_train_ranker, checkpoint="chat", help="train a chat checkpoint's "
                 "ranker against hard candidates (the replies of similar training contexts); needs its reply index")
    tr.add_argument("--corpus", action="append", help="dialogue corpora of the training rows (default: the "
                    "index's)")
    tr.add_argument("--rows", type=at_least(10), default=4000, help="training rows (default 4000)")
    tr.add_argument("--val-rows", type=at_least(10), default=500, help="validation rows that choose the epoch "
                    "(default 500)")
    tr.add_argument("--val-corpus", default="chitchat", help="corpus of the validation rows (default chitchat)")
    tr.add_argument("--distractors", type=at_least(3), default=9, help="distractors a row: all but 2 from "
                    "similar contexts, 2 random (default 9)")
    tr.add_argument("--generated", type=at_least(0), default=0, help="replies the decoder samples for each row, "
                    "as further distractors (default 0: the app's default path ranks training replies only)")
    tr.add_argument("--opening-share", type=float, default=0.5, help="share of rows that answer a conversation's "
                    "first turn, as most of the app's replies do (default 0.5)")
    tr.add_argument("--epochs", type=at_least(1), default=30, help="passes over the features (default 30)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the rows, distractors and initialisation")

    ps = command(sub, "probe-sentiment", cmd_probe_sentiment, checkpoint="sentiment", help="accuracy on negated "
                 "and contrastive phrases (scripts/sentiment_probe.jsonl) or on another probe file, such as the "
                 "plain statements of scripts/sentiment_neutral_probe.jsonl")
    ps.add_argument("--file", help="another probe file: jsonl rows with text, label (1, 0 or \"neutral\") and "
                    "kind")
    ps.add_argument("--json", action="store_true", help="print the whole result as JSON")

    for name, fn, helptext in [("generate", cmd_generate, "continue a prompt with the language model"),
                               ("chat", cmd_chat, "talk to the chat model (reads lines from stdin)"),
                               ("sentiment", cmd_sentiment, "classify texts with the sentiment model")]:
        s = command(sub, name, fn, checkpoint="", help=helptext)
        s.add_argument("--impl", choices=["fused", "cells"], default=None,
                       help="run on the fused LSTM (default) or on the cells written from the equations")
        if name == "generate":
            s.add_argument("--prompt", default="", help="text to continue")
            s.add_argument("--num-samples", type=at_least(1), default=1, help="how many continuations")
            s.add_argument("--multiline", action="store_true", help="go on past the end of a line")
            s.add_argument("--raw", action="store_true", help="print the tokens as the model wrote them (WikiText "
                           "markup such as ' @-@ ' and spaces before punctuation) instead of readable text")
        if name == "chat":
            s.add_argument("--source", choices=["retrieved", "both", "generated"], default=None,
                           help="where candidate replies come from: the training replies of the reply index "
                                "(default; a plain reply when none fits), the decoder, or both (one score ranks "
                                "them)")
            s.add_argument("--show-source", action="store_true", help="say after each reply where it came from")
        if name == "sentiment":
            s.add_argument("text", nargs="*", help="texts to classify")
            s.add_argument("--file", help="a UTF-8 text file, one text a line")
            s.add_argument("--json", action="store_true", help="one JSON object a line, with attention")
        else:
            add_generation_args(s)
    return p


USER_ERRORS = (CorpusError, CheckpointError, TokenizerError, GenerationError, ConfigError, TrainingError,
               FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _guard(fn) -> int:
    """The project's own errors (bad input) print one line and exit 2; anything else is a bug in this program
    and shows as one: its traceback and where to report it, exit 1."""
    try:
        code = fn()
        sys.stdout.flush()  # here, where a reader that has gone is caught below, not in the exit's own flush
        return code
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # whoever read the output stopped (`| head`): nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit's flush fails once more
        return 141  # as a shell reports a command ended by SIGPIPE
    except Exception:
        import traceback

        traceback.print_exc()
        print("internal error: this is a bug in the program, not a problem with your input; please report it "
              "with the command you ran and the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
