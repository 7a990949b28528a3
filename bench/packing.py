"""What packing costs a bidirectional LSTM on padded batches (the chat encoder's situation).

    python bench/packing.py                   # writes bench/results/packing.json

Forward + backward of a 1-layer bidirectional nn.LSTM (256 a direction) over a batch of 64 sequences whose
lengths are spread between 20 and 50 tokens: packed with `pack_padded_sequence` (what `nlp.models.run_rnn`
does, exact for both directions) against the same call on the padded tensor (the baseline: fast, but the
backward direction then reads the padding first, so it is not a correct substitute as it stands).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, median_ms, save  # noqa: E402  (bench/ is on sys.path when a script runs)


def main(repeats: int = 7) -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(256, 256, batch_first=True, bidirectional=True)
    x = torch.randn(64, 50, 256, requires_grad=True)
    lengths = torch.linspace(20, 50, 64).long()

    def packed():
        out, _ = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        pad_packed_sequence(out, batch_first=True)[0].sum().backward()

    def padded():
        lstm(x)[0].sum().backward()

    a, b = median_ms(packed, repeats), median_ms(padded, repeats)
    save("packing", {"machine": machine(), "what": "fwd+bwd, 1x256 BiLSTM, batch 64, lengths 20-50 (max 50)",
                     "ms_per_step": {"packed (ours)": round(a, 1), "padded (baseline)": round(b, 1)},
                     "packed_relative_cost": round(a / b, 2)})


if __name__ == "__main__":
    main()
