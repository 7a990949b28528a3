"""Uncurated samples for the README: the chat model's first reply to ten everyday prompts and three
continuations from the language model, with fixed seeds. Prints Markdown; a missing model is reported.

    python scripts/readme_samples.py > samples.md
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from nlp.decoding import GenerationConfig, make_generator  # noqa: E402
from nlp.serve import chat_reply, continue_text  # noqa: E402

CHAT_PROMPTS = ["Hi, how are you?", "What did you do this weekend?", "Do you have any pets?",
                "What is your favourite food?", "I just got back from the gym.", "Do you like movies?",
                "Where are you from?", "What music do you listen to?", "I'm so tired today.",
                "Any plans for the holidays?"]
LM_PROMPTS = ["The history of the city", "In 1998 , the band", "The species is found"]
SAMPLING = dict(strategy="sample", temperature=0.8, top_p=0.9, repetition_penalty=1.1, no_repeat_ngram_size=3)


def md(text: str) -> str:
    """Model output as literal Markdown text: HTML escaped, Markdown punctuation backslash-escaped, one line."""
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", html.escape(" ".join(text.split()), quote=False))


def main() -> None:
    try:
        chat = load_checkpoint(ROOT / "checkpoints" / "chat")
        cfg = GenerationConfig(max_new_tokens=40, **SAMPLING)
        print("| prompt | first reply |\n| --- | --- |")
        for seed, prompt in enumerate(CHAT_PROMPTS):  # one seed each: a shared seed would correlate the draws
            reply = chat_reply(chat, [prompt], cfg, make_generator(seed))
            print(f"| {md(prompt)} | {md(''.join(reply.stream))} |")
    except CheckpointError as e:
        print(f"(chat model not available: {e})")
    print()
    try:
        lm = load_checkpoint(ROOT / "checkpoints" / "lm")
        cfg = GenerationConfig(max_new_tokens=60, **SAMPLING)
        for seed, prompt in enumerate(LM_PROMPTS):
            gen = continue_text(lm, prompt, cfg, make_generator(seed))
            print(f"> **{md(prompt)}** {md(''.join(gen.stream))}\n")
    except CheckpointError as e:
        print(f"(language model not available: {e})")


if __name__ == "__main__":
    main()
