"""Run `python -m nlp train` and interrupt it at an exact point with a real signal to itself (tests/test_resume.py).

    python tests/interrupt.py --after-step 150 --signal TERM -- --task lm --corpus ... --out run
    python tests/interrupt.py --in-save 2 --while tensors -- ...     # SIGKILL half-way through writing the tensors
    python tests/interrupt.py --in-save 2 --while between -- ...     # SIGKILL after the tensors, before state.json

`--after-step N` sends the signal when optimizer step N has updated the weights (SIGTERM: the loop notices it
between steps; SIGKILL: the process ends there and then, before step N is counted or saved). `--in-save K` kills
the process during its K-th write of the resume state. Nothing here changes what training computes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--after-step", type=int, default=0)
    p.add_argument("--signal", default="TERM", choices=["TERM", "INT", "KILL"])
    p.add_argument("--in-save", type=int, default=0)
    p.add_argument("--while", dest="during", default="tensors", choices=["tensors", "between"])
    a, rest = p.parse_known_args()
    argv = rest[1:] if rest[:1] == ["--"] else rest

    from nlp import train, train_state

    me = os.getpid()
    if a.after_step:
        real_step = train.Trainer.train_step

        def step(self, batch):
            out = real_step(self, batch)
            if self.p.step + 1 == a.after_step:
                os.kill(me, getattr(signal, f"SIG{a.signal}"))
            return out
        train.Trainer.train_step = step

    if a.in_save:
        saves = {"n": 0}
        real_save_file, real_write_json = train_state.save_file, train_state.write_json

        def save_file(tensors, filename, metadata=None):
            saves["n"] += 1
            real_save_file(tensors, filename, metadata=metadata)
            if saves["n"] == a.in_save and a.during == "tensors":
                size = os.path.getsize(filename)
                with open(filename, "r+b") as f:  # as if the kill came with half the bytes on disk
                    f.truncate(size // 2)
                os.kill(me, signal.SIGKILL)

        def write_json(path: Path, obj):
            if saves["n"] == a.in_save and a.during == "between" and Path(path).name == train_state.INFO:
                os.kill(me, signal.SIGKILL)
            real_write_json(path, obj)
        train_state.save_file, train_state.write_json = save_file, write_json

    return train.run(argv)


if __name__ == "__main__":
    sys.exit(main())
