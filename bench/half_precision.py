"""Does storing a language model's weights in float16 cost perplexity? Measures both on the same text.

    python bench/half_precision.py --run runs/lm --corpus wikitext2 --split validation

`--run` is a training folder whose checkpoint was saved with `half = true` and whose `resume/` holds the
same weights in float32 (true when the last evaluation was the best one; checked below). Writes
bench/results/half_precision.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import save  # noqa: E402  (bench/ is on sys.path when a script runs)

from nlp import data as D  # noqa: E402
from nlp.checkpoint import load_checkpoint  # noqa: E402
from nlp.corpora import load_corpus, words_in  # noqa: E402
from nlp.evaluate import lm_nll  # noqa: E402
from nlp.metrics import perplexities  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training folder with a float16 checkpoint and resume/")
    p.add_argument("--corpus", default="wikitext2", help="corpus to measure on")
    p.add_argument("--split", default="validation", help="split to measure on")
    a = p.parse_args()
    run = Path(a.run)
    ck = load_checkpoint(run)
    full = {k[len("model."):]: v for k, v in load_file(str(run / "resume" / "state.safetensors")).items()
            if k.startswith("model.")}
    half_now = {k: v for k, v in ck.model.state_dict().items() if k in full}
    same = all(torch.equal(full[k].half().float(), half_now[k]) for k in half_now)
    if not same:
        sys.exit("resume/ holds other weights than the checkpoint (the last evaluation was not the best)")
    ds = load_corpus(a.corpus)[a.split]
    stream = D.lm_stream(ds, ck.tokenizer)
    n_words = words_in(ds)
    result = {"checkpoint": str(run), "corpus": a.corpus, "split": a.split}
    with torch.no_grad():
        result["float16_stored"] = perplexities(lm_nll(ck.model, stream), stream.numel(), n_words)
        ck.model.load_state_dict(full, strict=False)
        result["float32"] = perplexities(lm_nll(ck.model, stream), stream.numel(), n_words)
    save("half_precision", result)


if __name__ == "__main__":
    main()
