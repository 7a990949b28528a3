"""Uncurated samples for the README: the chat model's replies to 20 of the everyday conversations in
scripts/everyday_chat.jsonl (evenly spaced through the file, so every kind is there) beside the TF-IDF retrieval
baseline's, and three continuations from the language model, detokenized as the Generate page shows them;
fixed seeds, each model's default decoding (the app's). Prints Markdown; a missing model is reported.

    python scripts/readme_samples.py > samples.md
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets import concatenate_datasets  # noqa: E402

from nlp.baselines import Tfidf  # noqa: E402
from nlp.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from nlp.corpora import load_corpus  # noqa: E402
from nlp.decoding import make_generator  # noqa: E402
from nlp.serve import chat_reply, continue_text, default_decoding  # noqa: E402
from nlp.tokenizer import detokenize_wikitext  # noqa: E402

EVERYDAY = ROOT / "scripts" / "everyday_chat.jsonl"
SHOWN = 20
LM_PROMPTS = ["The history of the city", "In 1998 , the band", "The species is found"]


def md(text: str) -> str:
    """Model output as literal Markdown text: HTML escaped, Markdown punctuation backslash-escaped, one line."""
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", html.escape(" ".join(text.split()), quote=False))


def everyday(n: int = SHOWN) -> list[list[str]]:
    rows = [json.loads(line)["context"] for line in EVERYDAY.read_text(encoding="utf-8").splitlines() if line]
    return [rows[i * len(rows) // n] for i in range(n)]


def main() -> None:
    try:
        chat = load_checkpoint(ROOT / "checkpoints" / "chat")
        cfg = default_decoding(chat)
        contexts = everyday()
        train = concatenate_datasets([load_corpus(c)["train"].select_columns(["context", "response"])
                                      for c in chat.config["data"]["corpus"]])
        retrieved = Tfidf(train).reply(contexts)
        print("| conversation (the last turn is the user's) | model reply | TF-IDF retrieval baseline |")
        print("| --- | --- | --- |")
        for seed, (context, base) in enumerate(zip(contexts, retrieved)):  # a seed each: no correlated draws
            reply = chat_reply(chat, context, cfg, make_generator(seed))
            print(f"| {' / '.join(md(t) for t in context)} | {md(''.join(reply.stream))} | {md(base)} |")
    except CheckpointError as e:
        print(f"(chat model not available: {e})")
    print()
    try:
        lm = load_checkpoint(ROOT / "checkpoints" / "lm")
        cfg = dataclasses.replace(default_decoding(lm), max_new_tokens=60)
        for seed, prompt in enumerate(LM_PROMPTS):
            gen = continue_text(lm, prompt, cfg, make_generator(seed))
            shown, start = detokenize_wikitext(prompt + "".join(gen.stream)), detokenize_wikitext(prompt)
            print(f"> **{md(start)}** {md(shown.removeprefix(start))}\n")  # as the Generate page shows it
    except CheckpointError as e:
        print(f"(language model not available: {e})")


if __name__ == "__main__":
    main()
