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
import json
import os
import sys
from pathlib import Path

# only the error types at import time: `--help` and argument errors never wait for torch or datasets
from nlp.errors import CheckpointError, ConfigError, CorpusError, GenerationError, TokenizerError, TrainingError


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


GENERATION_FLAGS = ("strategy", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                    "no_repeat_ngram_size", "num_beams", "length_penalty", "max_new_tokens", "min_new_tokens",
                    "num_candidates", "cut_unfinished")


def generation_config(a: argparse.Namespace, ck, **extra):
    """The checkpoint's default decoding (a GenerationConfig) with the flags that were given on top."""
    from nlp.decoding import GenerationConfig
    from nlp.serve import default_decoding

    given = {k: getattr(a, k) for k in GENERATION_FLAGS if getattr(a, k, None) is not None}
    return GenerationConfig.from_dict({**default_decoding(ck).__dict__, **given, **extra})


def load(path: str, task: str, impl: str | None = None):
    from nlp.serve import open_checkpoint

    return open_checkpoint(path, task, impl)


# --------------------------------------------------------------------------- commands
def cmd_corpora(a) -> int:
    from nlp import corpora

    if a.action == "list":
        for spec in corpora.REGISTRY.values():
            print(f"{spec.name:14} {spec.task:9} {spec.package.name}=={spec.package.version:8} {spec.description}")
        print("\nalso: hf:NAME[:CONFIG] (Hugging Face hub) and local .txt/.csv/.tsv/.jsonl files")
        return 0
    if not a.name:
        raise CorpusError("corpora show needs a NAME")
    if a.name in corpora.REGISTRY:
        dd, info = corpora.load_named(a.name)
    else:
        dd, info = corpora.load_corpus(a.name), {"name": a.name}
    out = {"info": info, "splits": corpora.summary(dd), "examples": corpora.examples(dd, a.n)}
    if a.json:
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0
    for k, v in info.items():
        print(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}")
    print("\nsplit        " + "  ".join(f"{k:>15}" for k in next(iter(out["splits"].values()))))
    for split, s in out["splits"].items():
        print(f"{split:12} " + "  ".join(f"{v:>15,}" for v in s.values()))
    print("\nexamples (train):")
    for ex in out["examples"]:
        print("  " + json.dumps(ex, ensure_ascii=False)[:300])
    return 0


def cmd_tokenizer(a) -> int:
    from nlp.corpora import load_corpus
    from nlp.tokenizer import corpus_texts, train_tokenizer

    texts = (t for name in a.corpus for t in corpus_texts(load_corpus(name)))
    tok = train_tokenizer(texts, vocab_size=a.vocab_size, input_sentence_size=a.input_sentence_size)
    tok.save(a.out)
    print(f"wrote {a.out}: {tok.vocab_size} pieces")
    return 0


def cmd_eval(a) -> int:
    from nlp.evaluate import evaluate, record
    from nlp.tasks import TASKS

    ck = load(a.checkpoint, task=_task_of_checkpoint(a.checkpoint))
    gen = generation_config(a, ck) if TASKS[ck.task].decodes else None
    result = evaluate(ck, a.corpus, a.split, a.max_examples, gen, seed=a.seed or 0)
    where = []
    if a.output:
        where.append(record(result, Path(a.checkpoint), Path(a.output)))
    if a.record:  # the checkpoint's published numbers change only when asked
        where.append(record(result, Path(a.checkpoint), None, a.tag))
    if a.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        for k, v in result["metrics"].items():
            if not isinstance(v, (list, dict)):
                print(f"{k:24} {v:.4f}" if isinstance(v, float) else f"{k:24} {v}")
        for name, b in result["baselines"].items():
            print(f"baseline {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in b.items() if isinstance(v, float)))
    for path in where:
        print(f"written to {path}", file=sys.stderr)
    return 0


def cmd_tune_chat(a) -> int:
    from nlp.checkpoint import update_config
    from nlp.evaluate import tune_chat

    ck = load(a.checkpoint, "chat")
    result = tune_chat(ck, a.corpus, a.split, a.max_examples, seed=a.seed)
    print(json.dumps(result, indent=1))
    if a.write:
        decoding = {**(ck.config.get("decoding") or {}), **result["decoding"]}
        update_config(a.checkpoint, decoding=decoding, decoding_tuning={k: v for k, v in result.items()
                                                                         if k != "decoding"})
        print(f"written to {Path(a.checkpoint) / 'config.json'} (\"decoding\")", file=sys.stderr)
    return 0


def cmd_tune_sentiment(a) -> int:
    from nlp.checkpoint import update_config
    from nlp.evaluate import tune_sentiment

    ck = load(a.checkpoint, "sentiment")
    result = tune_sentiment(ck, a.corpus, a.split)
    print(json.dumps({k: v for k, v in result.items() if k != "grid"}, indent=1))
    if a.write:
        update_config(a.checkpoint, neutral=result["neutral"], neutral_tuning=result["tuned_on"])
        print(f"written to {Path(a.checkpoint) / 'config.json'} (\"neutral\")", file=sys.stderr)
    return 0


def cmd_probe_sentiment(a) -> int:
    from nlp.evaluate import PROBE, probe_sentiment

    result = probe_sentiment(load(a.checkpoint, "sentiment"), Path(a.file) if a.file else PROBE)
    if a.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
        return 0
    print(f"accuracy {result['accuracy']:.3f} on {result['n']} phrases of {result['file']}")
    for name, acc in result["baselines"].items():
        print(f"  baseline {name}: {acc:.3f}")
    for kind, m in result["by_kind"].items():
        print(f"  {kind or '(no kind)':10} {m['accuracy']:.3f} of {m['n']}")
    for m in result["misses"]:
        truth = {1: "positive", 0: "negative"}.get(m["label"], "neutral")
        print(f"  missed: {m['text']!r} is {truth}; the model said {m['verdict']} (p={m['probability']:.2f}"
              + (f", rating {m['rating']:+.2f})" if m.get("rating") is not None else ")"))
    return 0


def _task_of_checkpoint(path: str) -> str:
    from nlp.checkpoint import read_config

    return read_config(path)["task"]


def cmd_generate(a) -> int:
    from nlp.decoding import make_generator
    from nlp.serve import check_text, continue_text, readable_stream

    ck = load(a.checkpoint, "lm", a.impl)
    prompt = check_text(a.prompt, "prompt")
    cfg = generation_config(a, ck, stop_at_eos=not a.multiline)
    for n in range(a.num_samples):
        if a.num_samples > 1:
            print(f"--- sample {n + 1}")
        gen = continue_text(ck, prompt, cfg, make_generator(None if a.seed is None else a.seed + n))
        if a.raw:
            sys.stdout.write(prompt)
        for piece in gen.stream if a.raw else readable_stream(gen.stream, prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def cmd_index(a) -> int:
    from nlp.checkpoint import read_config
    from nlp.retrieval import build_index, index_path

    config = read_config(a.checkpoint)
    if config["task"] != "chat":
        raise CheckpointError(f"{a.checkpoint} holds no chat model: a reply index serves a chat checkpoint")
    corpora = a.corpus or config.get("train", {}).get("corpus") or ["chitchat", "cornell"]
    out = index_path(a.checkpoint)
    index = build_index(corpora, out)
    print(f"{len(index):,} replies ({', '.join(f'{c} {n:,}' for c, n in index.info['per_corpus'].items())}) "
          f"indexed in {out}")
    return 0


def cmd_train_ranker(a) -> int:
    from nlp.serve import open_checkpoint, open_index
    from nlp.train_ranker import train_ranker

    if not 0 <= a.opening_share <= 1:
        raise ConfigError(f"--opening-share must be from 0 to 1, got {a.opening_share}")
    ck = open_checkpoint(a.checkpoint, task="chat", ranker=False)
    index = open_index(ck)
    if index is None:
        raise CheckpointError(f"{a.checkpoint} has no reply index; build it first: python -m nlp index "
                              f"--checkpoint {a.checkpoint}")
    corpora = a.corpus or index.corpora
    info = train_ranker(ck, index, corpora, rows=a.rows, val_rows=a.val_rows, val_corpus=a.val_corpus,
                        negatives=a.distractors, generated=a.generated, opening_share=a.opening_share,
                        epochs=a.epochs, seed=a.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"ranker saved in {a.checkpoint}: validation Hits@1 {info['val_hits_at_1']:.3f} among "
          f"{a.distractors + a.generated + 1} (chance {info['chance']:.3f}), epoch {info['epoch']}")
    return 0


def cmd_chat(a) -> int:
    from nlp.decoding import make_generator
    from nlp.serve import DEFAULT_SOURCE, chat_reply, check_text, open_index

    ck = load(a.checkpoint, "chat", a.impl)
    cfg = generation_config(a, ck)
    source = a.source or DEFAULT_SOURCE
    index = open_index(ck) if source != "generated" else None
    if index is None and source != "generated":
        build = f"python -m nlp index --checkpoint {a.checkpoint}"
        if a.source == "retrieved":
            raise CheckpointError(f"{a.checkpoint} has no reply index for --source retrieved; build it with: {build}")
        print(f"(no reply index: the replies are the model's own; {build} adds people's)", file=sys.stderr)
    g = make_generator(a.seed)
    history: list[str] = []
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model; /reset starts over, /quit or Ctrl-D leaves")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history = []
            print("(new conversation)")
            continue
        if not line:
            continue
        try:
            check_text(line, "message")
        except GenerationError as e:
            print(f"({e})")
            continue
        history.append(line)
        reply = chat_reply(ck, history, cfg, g, source=source, index=index)
        sys.stdout.write("bot> ")
        for piece in reply.stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        if a.show_source:
            sys.stdout.write(f"  [{source_line(reply)}]")
        sys.stdout.write("\n")
        history.append(reply.text)
    return 0


def source_line(reply) -> str:
    """Where a chat reply came from, in a few words."""
    if reply.source == "plain":
        return "nothing in the training dialogues fit well enough"
    if reply.source == "retrieved":
        return f"a reply from the {reply.corpus} training dialogues"
    return "written by the model"


def cmd_sentiment(a) -> int:
    from nlp.serve import check_text, classify

    ck = load(a.checkpoint, "sentiment", a.impl)
    texts = list(a.text)
    if a.file:
        if not Path(a.file).is_file():
            raise GenerationError(f"--file {a.file}: no such file" if not Path(a.file).exists()
                                  else f"--file {a.file} is not a file; give a UTF-8 text file, one text a line")
        raw = Path(a.file).read_bytes()
        if b"\x00" in raw:
            raise GenerationError(f"{a.file} looks binary (NUL bytes); give a UTF-8 text file, one text a line")
        try:
            texts += [t for t in raw.decode("utf-8-sig").splitlines() if t.strip()]
        except UnicodeDecodeError:
            raise GenerationError(f"{a.file} is not UTF-8 text") from None
    if not texts:
        raise GenerationError("give some text, or --file with one text a line")
    for t in texts:
        check_text(t, "text")
    for text, r in zip(texts, classify(ck, texts)):
        if a.json:
            print(json.dumps({"text": text, **r}, ensure_ascii=False))
        else:
            rating = f"  rating {r['rating']:+.2f}" if "rating" in r else ""
            print(f"{r['verdict']:15} p={r['probability']:.3f}{rating}  {text[:100]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["train"]:  # the trainer owns its (generated) options
        from nlp.train import run
        return _guard(lambda: run(argv[1:]))
    a = build_parser().parse_args(argv)
    return _guard(lambda: a.fn(a))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nlp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("corpora", help="list the named corpora, or show one's splits and examples")
    c.add_argument("action", choices=["list", "show"])
    c.add_argument("name", nargs="?", help="corpus name, hf:NAME or a file (for show)")
    c.add_argument("--n", type=at_least(1), default=3, help="examples to print")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(fn=cmd_corpora)

    t = sub.add_parser("tokenizer", help="train the SentencePiece tokenizer")
    t.add_argument("action", choices=["train"])
    t.add_argument("--corpus", action="append", required=True, help="a corpus to learn from (repeatable)")
    t.add_argument("--vocab-size", type=at_least(8), default=8000, help="number of pieces (default 8000)")
    t.add_argument("--input-sentence-size", type=at_least(1), default=2_000_000, help="sentences sampled for training")
    t.add_argument("--out", required=True, help="where to write tokenizer.model")
    t.set_defaults(fn=cmd_tokenizer)

    sub.add_parser("train", help="train a model (python -m nlp train --help)")

    e = sub.add_parser("eval", help="metrics and baselines of a checkpoint on a corpus split")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder")
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
    e.set_defaults(fn=cmd_eval)

    tc = sub.add_parser("tune-chat", help="choose a chat checkpoint's ranking weights, temperature and candidate "
                        "count on validation data")
    tc.add_argument("--checkpoint", required=True, help="chat checkpoint folder")
    tc.add_argument("--corpus", default="chitchat", help="dialogue corpus (default chitchat)")
    tc.add_argument("--split", default="validation", choices=["train", "validation"], help="never test")
    tc.add_argument("--max-examples", type=at_least(2), default=1000, help="rows for Hits@1 (default 1000)")
    tc.add_argument("--seed", type=int, default=0, help="seed for the row sample and the candidates")
    tc.add_argument("--write", action="store_true", help="store the choice as the checkpoint's default decoding")
    tc.set_defaults(fn=cmd_tune_chat)

    ts = sub.add_parser("tune-sentiment", help="choose when a sentiment checkpoint says 'neutral / mixed', on "
                        "validation data")
    ts.add_argument("--checkpoint", required=True, help="sentiment checkpoint folder")
    ts.add_argument("--corpus", nargs="+", default=["vader-movies", "vader-tweets", "vader-amazon", "vader-nyt"],
                    help="rated corpora, pooled (default: the four VADER domains)")
    ts.add_argument("--split", default="validation", choices=["train", "validation"], help="never test")
    ts.add_argument("--write", action="store_true", help="store the rule in the checkpoint's config.json")
    ts.set_defaults(fn=cmd_tune_sentiment)

    ix = sub.add_parser("index", help="build a chat checkpoint's reply index: the training replies, found by the "
                        "contexts they answered (CHECKPOINT/index)")
    ix.add_argument("--checkpoint", required=True, help="chat checkpoint folder")
    ix.add_argument("--corpus", action="append", help="a dialogue corpus to index (repeatable; default: the "
                    "corpora the model was trained on)")
    ix.set_defaults(fn=cmd_index)

    tr = sub.add_parser("train-ranker", help="train a chat checkpoint's ranker against hard candidates (the "
                        "replies of similar training contexts); needs its reply index")
    tr.add_argument("--checkpoint", required=True, help="chat checkpoint folder")
    tr.add_argument("--corpus", action="append", help="dialogue corpora of the training rows (default: the "
                    "index's)")
    tr.add_argument("--rows", type=at_least(10), default=4000, help="training rows (default 4000)")
    tr.add_argument("--val-rows", type=at_least(10), default=500, help="validation rows that choose the epoch "
                    "(default 500)")
    tr.add_argument("--val-corpus", default="chitchat", help="corpus of the validation rows (default chitchat)")
    tr.add_argument("--distractors", type=at_least(3), default=9, help="distractors a row: all but 2 from "
                    "similar contexts, 2 random (default 9)")
    tr.add_argument("--generated", type=at_least(0), default=3, help="replies the decoder samples for each row, "
                    "as further distractors (default 3)")
    tr.add_argument("--opening-share", type=float, default=0.5, help="share of rows that answer a conversation's "
                    "first turn, as most of the app's replies do (default 0.5)")
    tr.add_argument("--epochs", type=at_least(1), default=30, help="passes over the features (default 30)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the rows, distractors and initialisation")
    tr.set_defaults(fn=cmd_train_ranker)

    ps = sub.add_parser("probe-sentiment", help="accuracy on negated and contrastive phrases "
                        "(scripts/sentiment_probe.jsonl) or on another probe file, such as the plain statements "
                        "of scripts/sentiment_neutral_probe.jsonl")
    ps.add_argument("--checkpoint", required=True, help="sentiment checkpoint folder")
    ps.add_argument("--file", help="another probe file: jsonl rows with text, label (1, 0 or \"neutral\") and "
                    "kind")
    ps.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ps.set_defaults(fn=cmd_probe_sentiment)

    for name, fn, helptext in [("generate", cmd_generate, "continue a prompt with the language model"),
                               ("chat", cmd_chat, "talk to the chat model (reads lines from stdin)"),
                               ("sentiment", cmd_sentiment, "classify texts with the sentiment model")]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", required=True, help="checkpoint folder")
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
        s.set_defaults(fn=fn)
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
