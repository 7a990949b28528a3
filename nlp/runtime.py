"""Where and how a training run computes: device, mixed precision, the ranks of a torchrun job, its seeds, and
the signals that ask it to stop.

The Trainer asks this module these things and nothing else about hardware: which device and rank it is
(`Runtime`), what autocast to use (`Runtime.autocast`), and whether all ranks agree on something (`agree`),
which is how stop decisions (a signal on one rank, a time limit that runs out a moment earlier on another)
become one decision taken at the same step everywhere, so no rank waits forever for the others.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls run natively (elsewhere oneDNN emulates them, slower than float32)."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype mixed precision uses on this device, or None where it would not pay.

    On a 2-core AVX512-BF16 CPU a 2x512 LSTM language-model step runs 1.6x faster in bfloat16
    (bench/mixed_precision.py); weights, optimizer state and the loss stay float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None

    @classmethod
    def start(cls, device: str = "auto", amp: bool = True) -> Runtime:
        """The device and rank of this process; under torchrun each process takes its own GPU (or shares the
        CPU) and joins the process group (NCCL on GPUs, gloo on the CPU)."""
        world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dev, rank, world, amp_dtype(dev) if amp else None)

    @property
    def main(self) -> bool:
        """Rank 0 writes files and prints; the others compute."""
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training forward goes through: DDP under torchrun (gradients averaged), else the model."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag true on any rank -> true on every rank (one all-reduce; free on a single process)."""
        if not distributed():
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` (equal shapes), in rank order, on the CPU. The tensors travel on this rank's device
        (NCCL gathers only GPU tensors). A collective: every rank calls it."""
        if not distributed():
            return [t.detach().cpu()]
        out = [torch.empty_like(t, device=self.device) for _ in range(self.world)]
        dist.all_gather(out, t.detach().contiguous().to(self.device))
        return [g.cpu() for g in out]

    def barrier(self) -> None:
        if distributed():
            dist.barrier()

    def close(self) -> None:
        """Leave the process group together: rank 0 writes the files after the last collective, and a rank
        that tore the group down while rank 0 was still in it aborted now and then (gloo, torch 2.13)."""
        if distributed():
            dist.barrier()
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """torch's, Python's and NumPy's global RNGs (the last two only matter to code that might use them; seeded, a
    resumed run's state equals an uninterrupted one's in every stream)."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


class StopRequests:
    """SIGTERM and Ctrl-C ask the loop to stop between steps (the step in hand finishes and the state is
    saved); a second Ctrl-C quits at once. Installed on every rank, so a signal to any process counts."""

    def __init__(self, announce: bool):
        self.signal: int | None = None
        self.announce = announce
        self.old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._on) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _on(self, signum, frame):
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        if self.announce and signum == signal.SIGINT:
            print("\nstopping after this step and saving (Ctrl-C again to quit at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)

    @property
    def reason(self) -> str:
        return {signal.SIGTERM: "stopped by SIGTERM", signal.SIGINT: "interrupted (Ctrl-C)"}.get(self.signal, "")
