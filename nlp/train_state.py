"""The state a training run resumes from: `resume/state.safetensors` + `resume/state.json` in the run folder.

It holds everything the next step depends on, so a run stopped (or killed) and resumed ends with the same
tensors as one that never stopped: the model, the optimizer, the scheduler with its horizon, every RNG stream
(torch on the CPU and each GPU, for every rank; Python's and NumPy's), the position in the data (epoch and
batch; the order itself is seeded by the epoch), the LM's carried hidden state (each rank's), the gradient
scaler, and the counters (step, best validation loss, patience, non-finite steps in a row).

Writing is crash-safe. The tensors file is the commit point: it is written under a temporary name and renamed
into place, and it carries the JSON in its own metadata. state.json, written after it, is the readable copy; a
kill between the two renames leaves the new tensors with the old JSON, which the loader notices (the JSON's
`id` differs from the tensors') and then trusts the tensors' own copy. Nothing goes through pickle.
This is apart from the checkpoint format (nlp/checkpoint.py): a checkpoint serves a model; this resumes a run.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from nlp.checkpoint import nonfinite, unique_state, write_json
from nlp.errors import CheckpointError, TrainingError

STATE, INFO = "state.safetensors", "state.json"


# --------------------------------------------------------------------------- pieces
def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, st in opt_state["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def flatten_carry(carry) -> tuple[list[torch.Tensor], str | None]:
    """A recurrent state (a tensor, or a tuple of them as nn.LSTM's (h, c)) -> (tensors, its shape's name)."""
    if carry is None:
        return [], None
    if torch.is_tensor(carry):
        return [carry], "tensor"
    return list(carry), f"tuple{len(carry)}"


def unflatten_carry(tensors: list[torch.Tensor], kind: str | None):
    if kind is None:
        return None
    return tensors[0] if kind == "tensor" else tuple(tensors)


def gather_carries(rt, carry) -> list:
    """Each rank's carried state (tensors of equal shape on every rank), on rank 0 (`rt`: nlp.runtime.Runtime;
    a collective call under DDP)."""
    if rt.world == 1:
        return [carry]
    flat, kind = flatten_carry(carry)
    gathered = [rt.gather(t) for t in flat]  # per tensor: every rank's
    return [unflatten_carry([g[r] for g in gathered], kind) for r in range(rt.world)]


def gather_rng_states(rt) -> list[dict]:
    """Ranks 1..'s torch RNG states (the CPU's, and on a GPU its own device's), on rank 0 (a collective call)."""
    if rt.world == 1:
        return []
    mine = {"rng.torch": torch.get_rng_state()}
    if rt.device.type == "cuda":
        mine["rng.cuda_own"] = torch.cuda.get_rng_state(rt.device)
    gathered = {name: rt.gather(t) for name, t in mine.items()}
    return [{name: g[r] for name, g in gathered.items()} for r in range(1, rt.world)]


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG streams: torch's (CPU and each GPU) as tensors; Python's and NumPy's as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, words, gauss = random.getstate()
    meta: dict = {"python": [version, list(words), gauss]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(keys.astype("int64"))
        meta["numpy"] = [name, pos, has_gauss, cached]
    except ImportError:
        pass
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "rng.") -> None:
    torch.set_rng_state(tensors[prefix + "torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith(prefix + "cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if "python" in meta:
        version, words, gauss = meta["python"]
        random.setstate((version, tuple(words), gauss))
    if "numpy" in meta and prefix + "numpy" in tensors:
        import numpy as np

        name, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, tensors[prefix + "numpy"].numpy().astype("uint32"), pos, has_gauss, cached))


# --------------------------------------------------------------------------- save and load
def save(folder: Path, model: nn.Module, optimizer, scheduler, scaler=None, counters: dict | None = None,
         carries: list | None = None, rank_rngs: list[dict[str, torch.Tensor]] | None = None) -> None:
    """Write the resume state. `carries`: each rank's carried recurrent state (or None); `rank_rngs`: the torch
    RNG tensors of ranks 1.. (rank 0's are this process's)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.cpu() for k, v in unique_state(model).items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    bad = nonfinite(tensors)
    if bad:
        raise TrainingError(f"the weights or the optimizer state hold NaN or infinity ({', '.join(bad[:3])}); "
                            f"they were not saved, so {folder} keeps the last finite state")
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    for r, extra in enumerate(rank_rngs or [], start=1):
        tensors.update({f"rank{r}.{k}": v for k, v in extra.items()})
    kinds = []
    for r, carry in enumerate(carries or []):
        flat, kind = flatten_carry(carry)
        kinds.append(kind)
        tensors.update({f"carry.{r}.{i}": t.detach().cpu().contiguous() for i, t in enumerate(flat)})
    sched = scheduler.state_dict() if scheduler is not None else None
    if sched is not None:
        sched = {k: v for k, v in sched.items() if k != "lr_lambdas"}  # functions are rebuilt from the horizon
    info = {"format": 2, "id": uuid.uuid4().hex, **(counters or {}), "optimizer": opt_meta, "scheduler": sched,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": rng_meta, "carry": kinds}
    text = json.dumps(info)
    tmp = folder / f".{STATE}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"state.json": text})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / STATE)  # the commit point
    for stale in folder.glob(f".{STATE}.tmp-*"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    write_json(folder / INFO, info)


def read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(info, tensors) of a saved state. A state written before format 2 (no JSON in the tensors file) is read
    from state.json alone."""
    try:
        with safe_open(str(folder / STATE), "pt") as f:
            inner = (f.metadata() or {}).get("state.json")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if inner is not None:
            info = json.loads(inner)
            try:  # the readable copy, when it is the same save
                outer = json.loads((folder / INFO).read_text())
                info = outer if outer.get("id") == info["id"] else info
            except (OSError, ValueError):
                pass
        else:
            info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {folder}: {e}") from None
    return info, tensors


def restore(folder: Path, info: dict, tensors: dict[str, torch.Tensor], model: nn.Module, optimizer, scheduler,
            scaler=None, rank: int = 0, device: torch.device | str = "cpu"):
    """Load a read() state into the run's objects and RNGs; returns this rank's carried state (or None)."""
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    tied = set(model.state_dict()) - set(unique_state(model))
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"cannot resume from {folder}: its model does not match this configuration")
    optimizer.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
    if scheduler is not None and info.get("scheduler"):
        scheduler.load_state_dict({**scheduler.state_dict(), **info["scheduler"]})
    if scaler is not None and info.get("scaler"):
        scaler.load_state_dict(info["scaler"])
    prefix = f"rank{rank}.rng." if rank and f"rank{rank}.rng.torch" in tensors else "rng."
    set_rng_state(tensors, info.get("rng", {}) if prefix == "rng." else {}, prefix)
    if prefix + "cuda_own" in tensors and torch.cuda.is_available():  # another rank's own GPU
        torch.cuda.set_rng_state(tensors[prefix + "cuda_own"], device)
    kinds = info.get("carry") or []
    if rank >= len(kinds) or kinds[rank] is None:
        return None
    # in the weights' dtype: a run under bf16 autocast carries a bf16 state, which a float32 resume (--no-amp, or
    # a CPU without bf16) cannot feed to the fused LSTM; autocast casts it back down where it is on
    dtype = next(model.parameters()).dtype
    flat = [tensors[k].to(device, dtype) for k in sorted((k for k in tensors if k.startswith(f"carry.{rank}.")),
                                                         key=lambda k: int(k.rsplit(".", 1)[1]))]
    return unflatten_carry(flat, kinds[rank])
