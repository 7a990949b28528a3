"""What the benchmarks share: the machine description, a median timer, writing bench/results/NAME.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path


def machine() -> dict:
    import torch  # here, not at the top: bench/serve_memory.py sets MKL's memory settings before torch loads

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of fn() in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def interleaved_ms(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each fn() in milliseconds, one call of each in turn per round, after warm-up rounds:
    a machine whose speed drifts within minutes then slows every variant of a round alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return times


def save(name: str, result: dict) -> Path:
    """Write the result to bench/results/NAME.json and print it."""
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    text = json.dumps(result, indent=1)
    out.write_text(text + "\n")
    print(text)
    return out
