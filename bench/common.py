"""What the benchmarks share: a description of the machine, and writing a result to bench/results/NAME.json."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def save(name: str, result: dict) -> Path:
    """Write the result to bench/results/NAME.json and print it."""
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    text = json.dumps(result, indent=1)
    out.write_text(text + "\n")
    print(text)
    return out
