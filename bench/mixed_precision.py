"""What bfloat16 autocast buys an LSTM language model on a CPU with native bf16 (AVX512-BF16 or AMX).

    python bench/mixed_precision.py           # writes bench/results/mixed_precision.json

The shipped LM's shape (configs/lm.toml: 2x512 tied LSTM, 8k vocabulary, batch 32 x 70 tokens) trains on
the first windows of WikiText-2 from the same initial weights twice: in float32 (the baseline) and under
`torch.autocast("cpu", torch.bfloat16)`, what the trainer does when `amp` is on (nlp/train.py: amp_dtype).
Reported: the median time of a training step (forward, backward, AdamW) and, so that speed is not bought with
quality, the training loss over the last steps and the float32 validation loss after the same steps.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import tomllib
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import machine, save  # noqa: E402  (bench/ is on sys.path when a script runs)

from nlp import data as D  # noqa: E402
from nlp.corpora import load_corpus  # noqa: E402
from nlp.evaluate import lm_nll  # noqa: E402
from nlp.models import build_model  # noqa: E402
from nlp.tokenizer import Tokenizer  # noqa: E402
from nlp.train import cpu_has_native_bf16  # noqa: E402


def run(model, windows, val, bf16: bool, lr: float) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    times, losses, state = [], [], None
    model.train()
    for x, y in windows:
        t = time.perf_counter()
        with cast:
            hidden, state = model(x, state)
            loss, n = model.loss_from_hidden(hidden, y)
        state = tuple(s.detach() for s in state)
        opt.zero_grad()
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach() / n))
    model.eval()
    val_loss = lm_nll(model, val) / val.numel()  # the harness's own scorer, in float32
    step_s = statistics.median(times[3:])
    return {"ms_per_step": round(step_s * 1000, 1), "tokens_per_s": round(x.numel() / step_s),
            "train_loss_last_20_steps": round(statistics.mean(losses[-20:]), 4),
            "val_loss_float32": round(val_loss, 4)}


def main(steps: int = 60, val_tokens: int = 40_000) -> None:
    recipe = tomllib.loads((ROOT / "configs/lm.toml").read_text())
    tok = Tokenizer.load(ROOT / recipe["tokenizer"])
    ds = load_corpus("wikitext2")
    b, bptt = recipe["batch_size"], recipe["bptt"]
    windows = D.lm_windows(D.batchify(D.lm_stream(ds["train"], tok), b), bptt)[:steps]
    val = D.lm_stream(ds["validation"], tok)[:val_tokens]
    torch.manual_seed(0)
    shape = recipe["model"]
    model = build_model("lm", {**shape, "vocab_size": tok.vocab_size})
    result = {"machine": machine(), "native_bf16": cpu_has_native_bf16(),
              "what": f"{shape['num_layers']}x{shape['hidden_size']} LSTM LM (configs/lm.toml), batch {b} x {bptt}, "
                      f"{steps} AdamW steps on WikiText-2 train, validation loss per token on its first "
                      f"{val_tokens:,} tokens"}
    for name, bf16 in (("float32 (baseline)", False), ("bfloat16 autocast", True)):
        result[name] = run(copy.deepcopy(model), windows, val, bf16, recipe["lr"])
    result["speedup"] = round(result["float32 (baseline)"]["ms_per_step"]
                              / result["bfloat16 autocast"]["ms_per_step"], 2)
    save("mixed_precision", result)


if __name__ == "__main__":
    main()
