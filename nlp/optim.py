"""The optimizer and the learning-rate schedule of a training run, from its config.

Optimizers: AdamW (decoupled weight decay) or SGD with momentum. With `init_lr_scale` the weights a run copied
from another checkpoint (`init_from`) form a second group at lr * init_lr_scale: ULMFiT's discriminative
fine-tuning, pretrained layers move slower so that fine-tuning keeps what they learned. Schedules: cosine decay
after a linear warm-up (stepped every optimizer step), reduce-on-plateau (stepped at each evaluation) or constant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nlp.config import TrainConfig
from nlp.errors import ConfigError


def build_optimizer(model: nn.Module, cfg: TrainConfig, pretrained: set[str] = frozenset()) -> torch.optim.Optimizer:
    """One parameter group, or two under init_lr_scale (the weights named in `pretrained` at its scale); the
    schedule scales every group alike."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    copied = [p for n, p in named if n in pretrained]
    params = [p for _, p in named]
    if cfg.init_lr_scale != 1.0 and copied:
        params = [{"params": [p for n, p in named if n not in pretrained]},
                  {"params": copied, "lr": cfg.lr * cfg.init_lr_scale}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer must be adamw or sgd, got {cfg.optimizer!r}")


def build_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, horizon: int):
    """The learning-rate schedule over `horizon` optimizer steps; None for a constant rate."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.plateau_factor, patience=0)
    if cfg.schedule == "constant":
        return None
    if cfg.schedule != "cosine":
        raise ConfigError(f"schedule must be cosine, plateau or constant, got {cfg.schedule!r}")
    total, warm = max(1, horizon), cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def steps_every_batch(schedule) -> bool:
    """Whether the schedule steps after every optimizer step (else at evaluations, or never)."""
    return isinstance(schedule, torch.optim.lr_scheduler.LambdaLR)


def steps_on_plateau(schedule) -> bool:
    """Whether the schedule steps at each evaluation, on its validation loss."""
    return isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
