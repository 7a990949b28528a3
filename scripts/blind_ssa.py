"""Blind judgement of chat replies by sensibleness and specificity (SSA, Adiwardana et al. 2020).

    python scripts/blind_ssa.py collect --out docs/ssa/round-1          # replies of every system, shuffled
    (a person labels docs/ssa/round-1/labels.txt without opening key.json)
    python scripts/blind_ssa.py score docs/ssa/round-1 --labelled-by "..."   # -> docs/ssa.json
    python scripts/blind_ssa.py compare docs/ssa/round-3 app_default idk_ok_bot   # paired, with an interval

`collect` answers each context of scripts/ssa_contexts.jsonl (everyday openings and 2-5 turn conversations
written for this purpose, none taken from the corpora) with every system, then writes
  replies.txt   per context, its replies in a shuffled order under random ids, no system names
  key.json      id -> system (the judge does not open it)
  labels.txt    one line per id for the judge to complete
The judge marks each reply by the protocol (PROTOCOL below, also at the top of replies.txt).
`score` reads the labels and the key and writes {system: {n, sensible, specific, ssa}} into docs/ssa.json, SSA
being the mean of the two shares.

The systems, by name (--systems picks; the first four are always worth including):
  app_default     the app's default reply path (nlp.serve.chat_reply's defaults: retrieved replies ranked,
                  a plain reply when none matches well enough)
  generated_only  the decoder's candidates alone, as the app's "generated replies only" switch serves them
  retrieved_only  the retrieved candidates ranked, the best always shown (no plain reply)
  both_ranked     retrieved and generated candidates ranked together, the best shown
  tfidf_top1      the reply of the Chit-Chat training context nearest to the last message by TF-IDF
  idk_ok_bot      "I don't know." to a question, "Ok." otherwise
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import secrets
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONTEXTS = ROOT / "scripts" / "ssa_contexts.jsonl"
SSA_JSON = ROOT / "docs" / "ssa.json"
PROTOCOL = """Label each reply, in the conversation shown above it (the last line is the message it answers):
  sensible   it makes sense in the conversation: on topic, logical, consistent with what was said, no
             contradiction, nothing that refers to things never mentioned; "s" if so
  specific   (only when sensible) it is specific to this conversation, not a reply that would fit almost any
             message ("I don't know.", "Ok.", "That's nice."); "p" if so
A line of labels.txt is `ID sp` (sensible and specific), `ID s` (sensible only) or `ID -` (neither).
"""
SYSTEMS = ("app_default", "generated_only", "retrieved_only", "both_ranked", "tfidf_top1", "idk_ok_bot")
LABEL = re.compile(r"^(\w+)\s+(sp|s|-)\s*$")
VALUE = {"sp": 1.0, "s": 0.5, "-": 0.0}  # a reply's share of SSA: (sensible + specific) / 2


def idk_ok(context: list[str]) -> str:
    return "I don't know." if "?" in context[-1] else "Ok."


def conversation(turns: list[str]) -> str:
    """A context as replies.txt shows it, one turn a line, the last one the user's."""
    return "\n".join(f"  {'user' if (len(turns) - k) % 2 else 'bot '}: {t}" for k, t in enumerate(turns))


def make_systems(names: list[str], checkpoint: str, seed: int, also: dict[str, str] | None = None):
    """name -> function(context turns) -> reply text. `also` adds, per name, the app's default path served from
    another checkpoint (a design compared with the shipped one, say)."""
    systems = {}
    if "idk_ok_bot" in names:
        systems["idk_ok_bot"] = idk_ok
    if "tfidf_top1" in names:
        from nlp.baselines import Tfidf
        from nlp.corpora import load_corpus

        retriever = Tfidf(load_corpus("chitchat")["train"])
        systems["tfidf_top1"] = lambda c: retriever.reply([c])[0]
    # name -> (source, gated): the app's default path, and the variants it was chosen among; an ungated one
    # always shows its best reply, never a plain one
    model_systems = {"app_default": ("retrieved", True), "generated_only": ("generated", True),
                     "retrieved_only": ("retrieved", False), "both_ranked": ("both", True)}
    if any(n in model_systems for n in names) or also:
        from nlp.decoding import make_generator
        from nlp.serve import MIN_MATCH, MIN_SIMILARITY, chat_reply, default_decoding, open_checkpoint, open_index

        @functools.cache
        def served(path: str):  # each checkpoint loaded once, whatever the systems that serve it
            ck = open_checkpoint(path, task="chat")
            return ck, open_index(ck), default_decoding(ck)

        def answer(source: str, gated: bool, path: str = checkpoint):
            ck, index, cfg = served(path)
            gate = {"min_match": MIN_MATCH, "min_similarity": MIN_SIMILARITY} if gated else \
                {"min_match": float("-inf"), "min_similarity": float("-inf")}

            def reply(context: list[str]) -> str:
                r = chat_reply(ck, context, cfg, make_generator(seed), source=source, index=index, **gate)
                for _ in r.stream:
                    pass
                return r.text
            return reply
        for name, (source, gated) in model_systems.items():
            if name in names:
                systems[name] = answer(source, gated)
        for name, path in (also or {}).items():
            systems[name] = answer(*model_systems["app_default"], path)
    unknown = set(names) - set(systems)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    return systems


def collect(a) -> None:
    out = Path(a.out)
    if (out / "labels.txt").exists() and not a.force:
        raise SystemExit(f"{out} already holds a round; --force replaces it (and its labels)")
    contexts = [json.loads(line)["context"] for line in Path(a.contexts).read_text().splitlines() if line.strip()]
    also = dict(spec.split("=", 1) for spec in a.also)
    systems = make_systems(a.systems, a.checkpoint, a.seed, also)
    rng = random.Random(a.seed)
    key, blocks, ids = {}, [], []
    for n, context in enumerate(contexts, 1):
        replies = [(name, fn(context)) for name, fn in systems.items()]
        rng.shuffle(replies)
        lines = [f"=== {n}", conversation(context)]
        for name, text in replies:
            rid = secrets.token_hex(3)
            key[rid] = name
            ids.append(rid)
            lines.append(f"    [{rid}] {text}")
        blocks.append("\n".join(lines))
        print(f"{n}/{len(contexts)}", file=sys.stderr, end="\r")
    out.mkdir(parents=True, exist_ok=True)
    (out / "replies.txt").write_text(PROTOCOL + "\n" + "\n\n".join(blocks) + "\n")
    (out / "key.json").write_text(json.dumps({"systems": sorted(systems), "seed": a.seed, "contexts": a.contexts,
                                              "checkpoint": a.checkpoint, "key": key}, indent=1) + "\n")
    (out / "labels.txt").write_text("".join(f"{rid} \n" for rid in ids))
    print(f"\n{len(ids)} replies of {len(systems)} systems to {len(contexts)} contexts in {out}/replies.txt; "
          "label them in labels.txt without opening key.json", file=sys.stderr)


def read_labels(path: Path) -> dict[str, str]:
    labels = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if len(line.split()) < 2 or line.startswith("#"):  # blank, a comment, or an id not labelled yet
            continue
        m = LABEL.match(line.strip())
        if not m:
            raise SystemExit(f"{path}:{n}: expected 'ID sp', 'ID s' or 'ID -', got {line!r}")
        labels[m.group(1)] = m.group(2)
    return labels


def score(a) -> None:
    folder = Path(a.folder)
    key_info = json.loads((folder / "key.json").read_text())
    key = key_info["key"]
    labels = read_labels(folder / "labels.txt")
    missing = sorted(set(key) - set(labels))
    if missing:
        raise SystemExit(f"{len(missing)} replies are not labelled yet (first: {missing[0]})")
    table = {}
    for system in sorted(set(key.values())):
        marks = [labels[rid] for rid, s in key.items() if s == system]
        sensible = sum(m != "-" for m in marks) / len(marks)
        specific = sum(m == "sp" for m in marks) / len(marks)
        table[system] = {"n": len(marks), "sensible": round(sensible, 3), "specific": round(specific, 3),
                         "ssa": round((sensible + specific) / 2, 3)}
    output = Path(a.output)
    result = json.loads(output.read_text()) if output.exists() else {}
    result[folder.name] = {"labelled_by": a.labelled_by, "contexts": key_info.get("contexts", ""),
                           "systems": table}
    output.write_text(json.dumps(result, indent=1) + "\n")
    width = max(map(len, table))
    for system, row in sorted(table.items(), key=lambda kv: -kv[1]["ssa"]):
        print(f"{system:{width}}  n={row['n']}  sensible {row['sensible']:.3f}  specific {row['specific']:.3f}  "
              f"SSA {row['ssa']:.3f}")


def compare(a) -> None:
    """`compare`: system A against system B on the same contexts of a labelled round: the mean paired
    difference of their replies' SSA shares ((sensible + specific) / 2 per reply), a 95% bootstrap interval
    over the contexts (seeded), and the label pairs where the two replies differ."""
    folder = Path(a.folder)
    key = json.loads((folder / "key.json").read_text())["key"]
    labels = read_labels(folder / "labels.txt")
    pairs: dict[str, dict[str, tuple[str, str]]] = {}
    for rid, (context, text) in replies_by_context(folder).items():
        pairs.setdefault(context, {})[key[rid]] = (text, labels[rid])
    both = [p for p in pairs.values() if a.a in p and a.b in p]
    diff = [VALUE[p[a.a][1]] - VALUE[p[a.b][1]] for p in both]
    rng = random.Random(a.seed)
    means = sorted(sum(rng.choices(diff, k=len(diff))) / len(diff) for _ in range(a.resamples))
    low, high = means[int(0.025 * a.resamples)], means[int(0.975 * a.resamples) - 1]
    print(f"{a.a} - {a.b} on {len(diff)} contexts: {sum(diff) / len(diff):+.3f} "
          f"(95% bootstrap interval {low:+.3f} to {high:+.3f}; {a.resamples} resamples)")
    differ = Counter((p[a.a][1], p[a.b][1]) for p in both if p[a.a][0] != p[a.b][0])
    print(f"replies that differ: {sum(differ.values())}; label pairs ({a.a}, {a.b}): "
          + ", ".join(f"{x} / {y}: {n}" for (x, y), n in sorted(differ.items())))


def replies_by_context(folder: Path) -> dict[str, tuple[str, str]]:
    """id -> (the context's text block, the reply) of a round's replies.txt."""
    out = {}
    for block in (folder / "replies.txt").read_text().split("\n\n=== ")[1:]:
        lines = block.splitlines()
        context = "\n".join(ln for ln in lines[1:] if not ln.startswith("    ["))
        for ln in lines:
            if ln.startswith("    ["):
                rid, text = ln.strip()[1:].split("] ", 1) if "] " in ln else (ln.strip()[1:-1], "")
                out[rid] = (context, text)
    return out


def known_labels(rounds: list[Path]) -> dict[tuple[str, str], str]:
    """(conversation, reply), both stripped, -> label over the labelled rounds (a round's replies.txt and
    labels.txt; a later round's label wins)."""
    known = {}
    for folder in rounds:
        labels = read_labels(folder / "labels.txt")
        for rid, (context, text) in replies_by_context(folder).items():
            if rid in labels:
                known[(context.strip(), text.strip())] = labels[rid]
    return known


def carry(a) -> None:
    """`carry`: label a round's replies that earlier, labelled rounds hold word for word in the same
    conversation with the label given there (the same judgement of the same reply); the rest stay unlabelled."""
    new, known = Path(a.folder), known_labels([Path(s) for s in a.source])
    lines, carried = [], 0
    for rid, (context, text) in replies_by_context(new).items():
        label = known.get((context.strip(), text.strip()), "")
        carried += bool(label)
        lines.append(f"{rid} {label}".rstrip() + "\n")
    (new / "labels.txt").write_text("".join(lines))
    print(f"{carried} of {len(lines)} labels carried from {', '.join(a.source)}; the rest need a judge",
          file=sys.stderr)


def samples(a) -> None:
    """`samples`: a system's replies to n contexts evenly spaced through the round, as Markdown (uncurated)."""
    folder = Path(a.folder)
    key = json.loads((folder / "key.json").read_text())["key"]
    blocks = (folder / "replies.txt").read_text().split("\n\n=== ")
    blocks = [b for b in blocks if b.split("\n", 1)[0].strip().lstrip("=").strip().isdigit()]
    step = max(1, len(blocks) // a.n)
    for block in blocks[::step][: a.n]:
        lines = block.splitlines()
        turns = [ln.strip() for ln in lines[1:] if ln.startswith("  ") and not ln.startswith("    [")]
        reply = next(ln.split("] ", 1)[1] for ln in lines if ln.startswith("    [")
                     and key.get(ln.strip()[1:].split("]")[0]) == a.system)
        print("- " + " / ".join(t.split(": ", 1)[1] for t in turns) + f" -> **{reply}**")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="answer every context with every system; write the blind file and the key")
    c.add_argument("--out", required=True, help="folder of this round (e.g. docs/ssa/round-1)")
    c.add_argument("--systems", nargs="+", default=["app_default", "generated_only", "tfidf_top1", "idk_ok_bot"])
    c.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "chat"))
    c.add_argument("--also", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                   help="the app's default path served from another checkpoint, under NAME")
    c.add_argument("--contexts", default=str(CONTEXTS.relative_to(ROOT)), help="jsonl of {\"context\": [turns]}")
    c.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the shuffle")
    c.add_argument("--force", action="store_true", help="replace an existing round")
    c.set_defaults(fn=collect)
    s = sub.add_parser("score", help="score a labelled round into docs/ssa.json")
    s.add_argument("folder", help="the round's folder")
    s.add_argument("--labelled-by", required=True, help="who labelled it, and how (e.g. blind, one judge)")
    s.add_argument("--output", default=str(SSA_JSON), help="the JSON file the round is scored into")
    s.set_defaults(fn=score)
    cy = sub.add_parser("carry", help="label replies that an earlier labelled round shows word for word in the "
                        "same conversation")
    cy.add_argument("folder", help="the round to label")
    cy.add_argument("--source", required=True, nargs="+", help="the labelled rounds")
    cy.set_defaults(fn=carry)
    cp = sub.add_parser("compare", help="system A against system B on a labelled round: paired difference, "
                        "bootstrap interval")
    cp.add_argument("folder", help="the round's folder")
    cp.add_argument("a", help="a system of the round (e.g. app_default)")
    cp.add_argument("b", help="another system of the round (e.g. idk_ok_bot)")
    cp.add_argument("--resamples", type=int, default=5000)
    cp.add_argument("--seed", type=int, default=0)
    cp.set_defaults(fn=compare)
    m = sub.add_parser("samples", help="print a system's replies to n evenly spaced contexts (uncurated)")
    m.add_argument("folder", help="the round's folder")
    m.add_argument("--system", default="app_default")
    m.add_argument("--n", type=int, default=20)
    m.set_defaults(fn=samples)
    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
