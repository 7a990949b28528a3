"""What the chat scripts share: their options (a chat checkpoint, a corpus, a split and eval's fixed sample of
its rows), each script adding its own after these."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def chat_options(doc: str, rows: int, seeds: list[int] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "chat"))
    p.add_argument("--corpus", default="chitchat")
    p.add_argument("--split", default="validation")
    p.add_argument("--rows", type=int, default=rows)
    if seeds is not None:
        p.add_argument("--seeds", type=int, nargs="+", default=seeds)
    return p
