"""What each `python -m nlp` command does, given its parsed arguments (nlp/__main__.py parses them).

Each imports the library it needs when it runs, so that `--help` and a usage error never wait for torch or
datasets to load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nlp.errors import CheckpointError, ConfigError, CorpusError, GenerationError

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
    from nlp.corpora import corpus_texts, load_corpus
    from nlp.tokenizer import train_tokenizer

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
    from nlp.tuning import tune_chat

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
    from nlp.tuning import tune_sentiment

    ck = load(a.checkpoint, "sentiment")
    result = tune_sentiment(ck, a.corpus, a.split)
    print(json.dumps({k: v for k, v in result.items() if k != "grid"}, indent=1))
    if a.write:
        update_config(a.checkpoint, neutral=result["neutral"], neutral_tuning=result["tuned_on"])
        print(f"written to {Path(a.checkpoint) / 'config.json'} (\"neutral\")", file=sys.stderr)
    return 0


def cmd_probe_sentiment(a) -> int:
    from nlp.tuning import PROBE, probe_sentiment

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
    if not prompt.strip():
        raise GenerationError("the prompt is empty: give --prompt the beginning of a text to continue")
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
