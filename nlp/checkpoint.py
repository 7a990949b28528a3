"""A checkpoint is a folder: model.safetensors + config.json + tokenizer.model (+ metrics.json, train_log.jsonl).

Nothing here goes through pickle: tensors are safetensors, everything else JSON. Each file is written under
a temporary name and renamed into place, config.json last; config.json records the sha256 of the weights
and the tokenizer, so a folder left half-written by a crash is detected on load rather than half-loaded.
Weights may be stored in float16 (half the size) and are loaded back as float32.
(A training run's resume state is apart from this: nlp/train_state.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nlp.errors import CheckpointError, ConfigError
from nlp.models import build_model
from nlp.tokenizer import Tokenizer, TokenizerError

FORMAT = 1
WEIGHTS, CONFIG, TOKENIZER, METRICS, LOG = "model.safetensors", "config.json", "tokenizer.model", "metrics.json", \
    "train_log.jsonl"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    """The file's sha256, read in chunks (a weights file is not held in memory twice)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the second name of tied tensors (safetensors stores each tensor once)."""
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous()
    return out


def nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity (what is never written)."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def save_checkpoint(path: str | Path, model: nn.Module, tokenizer: Tokenizer, extra: dict | None = None,
                    half: bool = False) -> Path:
    """Write the model, its tokenizer and config.json (model config + `extra`: training config, provenance)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = unique_state(model)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tensors = {k: v.cpu() for k, v in state.items()}
    bad = nonfinite(tensors)
    if bad:  # such a file would only fail to load (or serve NaN); whatever is at `path` stays
        raise CheckpointError(f"not saving {path}: {', '.join(bad[:3])} hold NaN or infinity"
                              + (" (too large for float16)" if half else ""))
    tmp = path / f".{WEIGHTS}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # like the other files; a host serving the folder as another user can read it
    weights_sha = _file_sha256(tmp)
    os.replace(tmp, path / WEIGHTS)
    write_atomic(path / TOKENIZER, tokenizer.model_bytes)
    config = {"format": FORMAT, "task": model.task, "model": model.config_dict(),
              "dtype": "float16" if half else "float32",
              "parameters": sum(p.numel() for p in model.parameters()),
              "files": {WEIGHTS: weights_sha, TOKENIZER: _sha256(tokenizer.model_bytes)},
              "tokenizer": {"vocab_size": tokenizer.vocab_size},
              "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__, **(extra or {})}
    write_json(path / CONFIG, config)
    return path


@dataclass
class Checkpoint:
    path: Path
    task: str
    model: nn.Module
    tokenizer: Tokenizer
    config: dict
    metrics: dict | None
    problems: list[str] = field(default_factory=list)  # what was wrong with the informative files, said once
    ranker: nn.Module | None = None  # a chat model's learned ranker (nlp.ranker), attached by nlp.serve


def rebuild_hint(path: Path) -> str:
    recipe = f"configs/{path.name}.toml" if path.name in ("lm", "chat", "sentiment") else "configs/<task>.toml"
    return f"rebuild it with `python -m nlp train --config {recipe} --out {path}` (docs/training.md)"


def train_log_file(path: str | Path) -> Path:
    """The training log of a checkpoint folder, or `path` itself when it is a log file."""
    return Path(path) if Path(path).is_file() else Path(path) / LOG


def read_train_log(path: str | Path, problems: list[str] | None = None) -> list[dict]:
    """The records of a checkpoint's train_log.jsonl (or of a log file), as the weights saw them.

    A hard kill (SIGKILL, power loss) loses the steps since the last periodic save, yet their log lines are
    already written; `--resume` then runs those steps again and logs them a second time. Each resume writes a
    "start" record with the step it resumed from, so the lines it supersedes (step > that) are dropped here.
    A half-written or damaged line is skipped (and counted in `problems`, when given). A missing log reads as
    no records.
    """
    file = train_log_file(path)
    try:
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines() if file.exists() else []
    except OSError as e:
        lines = []
        if problems is not None:
            problems.append(f"{file} cannot be read ({e.strerror or e})")
    records: list[dict] = []
    damaged = 0
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            r = None
        if not isinstance(r, dict):
            damaged += line.strip() != ""
            continue
        if r.get("event") == "start" and isinstance(r.get("step"), int):
            records = [x for x in records if not isinstance(x.get("step"), (int, float)) or x["step"] <= r["step"]]
        records.append(r)
    if damaged and problems is not None:
        problems.append(f"{file}: {damaged:,} damaged line{'s' * (damaged > 1)} skipped")
    return records


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"{path} is a file, not a checkpoint: give the folder that holds {CONFIG}, {WEIGHTS} "
                              f"and {TOKENIZER} (the shipped ones are under checkpoints/)")
    if not (path / CONFIG).is_file():
        what = "no checkpoint" if not path.exists() else f"no {CONFIG}"
        raise CheckpointError(f"{what} at {path}: {rebuild_hint(path)}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG} is not valid JSON ({e}): {rebuild_hint(path)}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "task" not in config or "model" not in config:
        raise CheckpointError(f"{path / CONFIG} is not a format-{FORMAT} checkpoint config: {rebuild_hint(path)}")
    if not isinstance(config["model"], dict) or not isinstance(config.get("files", {}), dict):
        raise CheckpointError(f"{path / CONFIG}: its \"model\" and \"files\" entries must be JSON objects: "
                              f"{rebuild_hint(path)}")
    return config


def update_config(path: str | Path, **entries) -> None:
    """Set top-level entries of a checkpoint's config.json (e.g. its tuned default decoding), atomically."""
    config = read_config(path)
    config.update(entries)
    write_json(Path(path) / CONFIG, config)


TASK_NAMES = {"lm": "language model", "chat": "chat model", "sentiment": "sentiment model"}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", impl: str | None = None,
                    draw_weights: bool = False, task: str | None = None) -> Checkpoint:
    """Load and validate a checkpoint folder (of `task`'s model, when given); every failure is a CheckpointError
    with one clear line.

    The model is built without drawing a random initialisation (its weights all come from the file), unless
    `draw_weights`: then the global random stream advances as it did before that shortcut (see `_init_from`)."""
    path = Path(path)
    config = read_config(path)
    if task and config["task"] != task:
        raise CheckpointError(f"{path} holds a {TASK_NAMES.get(config['task'], config['task'])}, not a "
                              f"{TASK_NAMES[task]}")
    for name in (WEIGHTS, TOKENIZER):
        try:
            digest = _file_sha256(path / name)
        except OSError:
            raise CheckpointError(f"{path} has no readable {name}: {rebuild_hint(path)}") from None
        want = config.get("files", {}).get(name)
        if want and digest != want:
            raise CheckpointError(f"{path / name} does not match its config (damaged or half-written): "
                                  f"{rebuild_hint(path)}")
    try:
        tokenizer = Tokenizer((path / TOKENIZER).read_bytes())
    except TokenizerError as e:
        raise CheckpointError(f"{path / TOKENIZER}: {e}") from None
    model_cfg = dict(config["model"])
    if impl:
        model_cfg["impl"] = impl
    try:
        model = build_model(config["task"], model_cfg, draw_weights)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG}: bad model config ({e})") from None
    if model.config.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"{path}: the model has {model.config.vocab_size} tokens but the tokenizer "
                              f"{tokenizer.vocab_size}")
    try:
        tensors = load_file(path / WEIGHTS)
    except Exception as e:  # safetensors raises its own error and others on a damaged header
        raise CheckpointError(f"{path / WEIGHTS} is not a readable safetensors file ({e}): {rebuild_hint(path)}") \
            from None
    tensors = {_current_name(model, k): v for k, v in tensors.items()}
    expected = model.state_dict()
    tied = set(expected) - set(unique_state(model))
    missing = set(expected) - set(tensors) - tied
    unexpected = set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS} does not fit the config: missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}")
    bad = set(nonfinite(tensors))
    for k, t in tensors.items():
        if t.shape != expected[k].shape:
            raise CheckpointError(f"{path / WEIGHTS}: {k} has shape {tuple(t.shape)}, the config needs "
                                  f"{tuple(expected[k].shape)}")
        if k in bad:
            raise CheckpointError(f"{path / WEIGHTS}: {k} holds NaN or infinite values (the run that saved it "
                                  f"diverged): {rebuild_hint(path)}")
    model.load_state_dict(tensors, strict=False)  # copies into the float32 parameters (float16 files too)
    model.to(device).eval()
    problems: list[str] = []
    return Checkpoint(path, config["task"], model, tokenizer, config, read_metrics(path, problems), problems)


def _current_name(model, key: str) -> str:
    """A weight's name in this version of the model, for checkpoints saved under a former one
    (the model's `former_names`: {old prefix: new prefix})."""
    old = next((o for o in getattr(model, "former_names", {}) if key.startswith(o)), None)
    return model.former_names[old] + key[len(old):] if old else key


def read_metrics(path: Path, problems: list[str]) -> dict | None:
    """metrics.json: {name: {"metrics": {...}, "baselines": {...}, ...}}, written by `eval --record`. It is
    informative: a damaged file or entry does not stop the model from serving; it is left out and said in
    `problems`."""
    file = path / METRICS
    if not file.exists():
        return None
    try:
        metrics = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{file} cannot be read ({e}); its results are not shown")
        return None
    if not isinstance(metrics, dict):
        problems.append(f"{file} is not a JSON object; its results are not shown")
        return None
    kept = {}
    for name, result in metrics.items():
        if isinstance(result, dict) and isinstance(result.get("metrics"), dict) \
                and isinstance(result.get("baselines", {}), dict):
            kept[name] = result
        else:
            problems.append(f"{file}: the entry {name!r} is not a result (metrics and baselines); it is not shown")
    return kept
