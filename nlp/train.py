"""One Trainer for the three tasks: lm, chat, sentiment.

    python -m nlp train --config configs/lm.toml                   # the shipped recipe
    python -m nlp train --config configs/lm.toml --lr 1e-3 --model.hidden_size 200 --max-steps 100
    python -m nlp train --task lm --corpus wikitext2 --dry-run      # a few steps on the real corpus
    torchrun --nproc_per_node 4 -m nlp train --config configs/lm.toml   # data parallel (DDP)

The run folder (--out) is itself a checkpoint folder: the best model so far (by validation loss), its
tokenizer, `train_log.jsonl` (every metric, one JSON object a line) and `resume/` (optimizer, scheduler,
RNG and position) so `--resume` continues an interrupted run where it stopped. Ctrl-C, SIGTERM, --max-steps
and --max-minutes all stop cleanly after saving that state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import tomllib
import typing
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from nlp import checkpoint as ckpt
from nlp import data as D
from nlp.corpora import CorpusError, load_corpus, source_of, task_of
from nlp.models import MODELS, build_model, token_nll
from nlp.tokenizer import Tokenizer, corpus_texts, train_tokenizer


@dataclass
class TrainConfig:
    task: str = field(default="lm", metadata={"help": "lm | chat | sentiment"})
    corpus: list[str] = field(default_factory=lambda: ["wikitext2"],
                              metadata={"help": "corpus names, hf:NAME or files; several are concatenated"})
    out: str = field(default="", metadata={"help": "run folder = checkpoint folder (default runs/<task>)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer.model to use; empty = train one"})
    tokenizer_corpus: list[str] = field(default_factory=list,
                                        metadata={"help": "corpora for a new tokenizer (default: --corpus)"})
    vocab_size: int = field(default=8000, metadata={"help": "size of a newly trained tokenizer"})
    init_from: str = field(default="", metadata={"help": "checkpoint whose matching weights start this model"})
    # batching
    batch_size: int = field(default=32, metadata={"help": "sequences per batch (per process under torchrun)"})
    eval_batch_size: int = field(default=32, metadata={"help": "sequences per evaluation batch"})
    bptt: int = field(default=70, metadata={"help": "lm: tokens per truncated-BPTT window"})
    context_turns: int = field(default=3, metadata={"help": "chat: earlier turns given to the encoder"})
    max_src_len: int = field(default=96, metadata={"help": "chat: context tokens kept (the newest)"})
    max_tgt_len: int = field(default=40, metadata={"help": "chat: response tokens kept"})
    max_len: int = field(default=128, metadata={"help": "sentiment: tokens kept per text"})
    max_train_examples: int = field(default=0, metadata={"help": "use only this many training rows (0 = all)"})
    # optimisation
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "decoupled weight decay (AdamW) / L2 (SGD)"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum"})
    clip: float = field(default=0.25, metadata={"help": "clip the gradient norm to this (0 = off)"})
    schedule: str = field(default="cosine", metadata={"help": "cosine (with warm-up) | plateau | constant"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    plateau_factor: float = field(default=0.25, metadata={"help": "plateau: multiply lr by this on a stall"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    rating_weight: float = field(default=0.5, metadata={"help": "sentiment: weight of the rating (MSE) loss"})
    epochs: int = field(default=10, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no limit)"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop (resumably) after this long (0 = no limit)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0 = once per epoch)"})
    eval_batches: int = field(default=0, metadata={"help": "validation batches per evaluation (0 = all)"})
    patience: int = field(default=3, metadata={"help": "early stop after this many evaluations without gain"})
    log_every: int = field(default=50, metadata={"help": "log the training loss every N steps"})
    save_every: int = field(default=500, metadata={"help": "save the resume state every N steps (0 = only at "
                                                           "evaluations and stops)"})
    seed: int = field(default=1234, metadata={"help": "seed for init, shuffling and dropout"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) | cpu | cuda | cuda:N"})
    amp: bool = field(default=True, metadata={"help": "mixed precision (bfloat16/float16) on CUDA"})
    half: bool = field(default=False, metadata={"help": "store checkpoint weights in float16"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from resume/"})
    dry_run: bool = field(default=False, metadata={"help": "a few steps on a slice of the data, to a temp folder"})
    model: dict = field(default_factory=dict, metadata={"help": "model settings ([model] table, --model.KEY V)"})


# --------------------------------------------------------------------------- configuration
def _cast(value: str, typ):
    origin = typing.get_origin(typ)
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if origin is list or typ is list:
        (inner,) = typing.get_args(typ) or (str,)
        return [_cast(v, inner) for v in value.split(",") if v != ""]
    return typ(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nlp train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML recipe (configs/*.toml); flags below override it")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            p.add_argument(flag, default=None, help=f"{f.metadata['help']} (default {_default(f)})",
                           type=str if typing.get_origin(typ) is list else typ)
    p.epilog = ("Model settings: --model.KEY VALUE, e.g. --model.hidden_size 200 --model.tie_weights false; "
                "the keys are those of LMConfig / Seq2SeqConfig / SentimentConfig in nlp/models.py.")
    return p


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def resolve_config(argv: list[str]) -> TrainConfig:
    """TOML file, then command-line flags, then --model.KEY overrides; unknown keys are errors."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    values: dict = {}
    if args.config:
        try:
            values = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            parser.error(f"cannot read {args.config}: {e}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(values) - known
    if bad:
        parser.error(f"{args.config}: unknown settings {sorted(bad)}")
    hints = typing.get_type_hints(TrainConfig)
    for name in known - {"model"}:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = _cast(v, hints[name]) if isinstance(v, str) and hints[name] is not str else v
    model = dict(values.get("model", {}))
    task = values.get("task", "lm")
    if task not in MODELS:
        parser.error(f"--task must be one of {list(MODELS)}")
    mhints = typing.get_type_hints(MODELS[task].Config)
    it = iter(rest)
    for tok in it:
        if not tok.startswith("--model."):
            parser.error(f"unrecognized argument {tok}")
        key, _, val = tok[len("--model."):].partition("=")
        if not val:
            val = next(it, None)
            if val is None:
                parser.error(f"{tok} needs a value")
        if key not in mhints:
            parser.error(f"unknown model setting {key!r} for task {task}: {sorted(mhints)}")
        try:
            model[key] = _cast(val, mhints[key])
        except ValueError as e:
            parser.error(f"--model.{key}: {e}")
    values["model"] = model
    for k in ("corpus", "tokenizer_corpus"):
        if isinstance(values.get(k), str):
            values[k] = [values[k]]
    cfg = TrainConfig(**values)
    if not cfg.out:
        cfg.out = f"runs/{cfg.task}"
    return cfg


# --------------------------------------------------------------------------- distributed helpers
def setup_device(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """(device, rank, world size); under torchrun each process takes its own GPU (or shares the CPU)."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def all_reduce_sum(*values: float, device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------- the trainer
class Stop(Exception):
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device, self.rank, self.world = setup_device(cfg)
        self.main = self.rank == 0
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.data = self._load_data()
        self.tok = self._tokenizer()
        self._prepare()
        mcfg = {**cfg.model, "vocab_size": self.tok.vocab_size}
        self.model = build_model(cfg.task, mcfg).to(self.device)
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = self._optimizer()
        self.sched = self._scheduler()
        self.amp_dtype = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step, self.epoch, self.pos, self.best, self.bad_evals = 0, 0, 0, math.inf, 0
        self.stop_reason = ""

    # data ----------------------------------------------------------------------
    def _load_data(self):
        from datasets import concatenate_datasets

        parts = [load_corpus(name) for name in self.cfg.corpus]
        tasks = {task_of(p) for p in parts}
        if tasks != {self.cfg.task}:
            raise CorpusError(f"task {self.cfg.task!r} cannot train on corpora of task(s) {sorted(tasks)}")
        splits = {}
        for s in ("train", "validation", "test"):
            common = set.intersection(*(set(p[s].column_names) for p in parts))
            splits[s] = concatenate_datasets([p[s].select_columns(sorted(common)) for p in parts])
        n = self.cfg.max_train_examples or (2000 if self.cfg.dry_run else 0)
        if n and len(splits["train"]) > n:
            splits["train"] = splits["train"].select(range(n))
        if self.cfg.dry_run:
            splits["validation"] = splits["validation"].select(range(min(200, len(splits["validation"]))))
        return splits

    def _tokenizer(self) -> Tokenizer:
        cfg = self.cfg
        own = self.out / ckpt.TOKENIZER
        if cfg.resume and own.exists():
            return Tokenizer.load(own)
        if cfg.tokenizer:
            return Tokenizer.load(cfg.tokenizer)
        if self.main:
            names = cfg.tokenizer_corpus or cfg.corpus
            texts = (t for name in names for t in corpus_texts(load_corpus(name)))
            vocab = min(cfg.vocab_size, 1000) if cfg.dry_run else cfg.vocab_size
            tok = train_tokenizer(texts, vocab_size=vocab, input_sentence_size=20000 if cfg.dry_run else 2_000_000)
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.write_atomic(own, tok.model_bytes)
        if self.world > 1:
            dist.barrier()
        return Tokenizer.load(own)

    def _prepare(self):
        cfg, tok = self.cfg, self.tok
        if cfg.task == "lm":
            train = D.lm_stream(self.data["train"], tok)
            if self.world > 1:  # each process reads its own stretch of the text
                per = train.numel() // self.world
                train = train[self.rank * per:(self.rank + 1) * per]
            self.train_data = D.batchify(train, cfg.batch_size)
            self.val_data = D.batchify(D.lm_stream(self.data["validation"], tok), cfg.eval_batch_size)
        elif cfg.task == "chat":
            args = (tok, cfg.context_turns, cfg.max_src_len, cfg.max_tgt_len)
            self.train_data = D.chat_examples(self.data["train"], *args)
            self.val_data = D.chat_examples(self.data["validation"], *args)
        else:
            self.train_data = D.sentiment_examples(self.data["train"], tok, cfg.max_len)
            self.val_data = D.sentiment_examples(self.data["validation"], tok, cfg.max_len)
        if not len(self.train_data):
            raise CorpusError("no training examples after tokenization")

    def epoch_batches(self, epoch: int) -> list:
        """This process's batches for an epoch: the same seeded order everywhere, so --resume can skip ahead."""
        if self.cfg.task == "lm":
            return D.lm_windows(self.train_data, self.cfg.bptt)
        batches = D.batches_of(self.train_data, self.cfg.batch_size, random.Random(self.cfg.seed * 1000 + epoch))
        per = len(batches) // self.world
        return batches[self.rank * per:(self.rank + 1) * per]  # equal counts, or DDP would wait forever

    def val_batches(self) -> list:
        if self.cfg.task == "lm":
            b = D.lm_windows(self.val_data, self.cfg.bptt)
        else:
            b = D.batches_of(self.val_data, self.cfg.eval_batch_size, None)
        return b[: self.cfg.eval_batches] if self.cfg.eval_batches else b

    # model pieces ----------------------------------------------------------------
    def _init_from(self, path: Path):
        """Copy every weight whose name and shape match (e.g. an LM's embedding into the classifier)."""
        source = ckpt.load_checkpoint(path).model.state_dict()
        own = self.model.state_dict()
        names = {"rnn.": "encoder."} if self.cfg.task == "sentiment" else {}
        taken = []
        for k, v in source.items():
            for a, b in names.items():
                k = k.replace(a, b) if k.startswith(a) else k
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                taken.append(k)
        if not taken:
            raise ckpt.CheckpointError(f"{path}: no weight fits this model")
        self.log({"event": "init_from", "path": str(path), "tensors": taken})

    def _optimizer(self):
        c = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        raise ValueError(f"optimizer must be adamw or sgd, got {c.optimizer!r}")

    def total_steps(self) -> int:
        per_epoch = len(self.epoch_batches(0))
        total = per_epoch * self.cfg.epochs
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def _scheduler(self):
        c = self.cfg
        if c.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=c.plateau_factor, patience=0)
        if c.schedule == "constant":
            return None
        if c.schedule != "cosine":
            raise ValueError(f"schedule must be cosine, plateau or constant, got {c.schedule!r}")
        total, warm = max(1, self.total_steps()), c.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    def autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    # losses ----------------------------------------------------------------------
    def batch_loss(self, batch, state=None, train: bool = True):
        """(summed loss, count, carried state, extra sums) for one batch of any task."""
        m = self.ddp if (self.ddp is not None and train) else self.model
        dev = self.device
        ls = self.cfg.label_smoothing if train else 0.0
        with self.autocast():
            if self.cfg.task == "lm":
                # the forward goes through the DDP wrapper (when there is one) so gradients are synchronised
                hidden, state = m(batch[0].to(dev), state)
                loss, n = self.model.loss_from_hidden(hidden, batch[1].to(dev), ls)
                return loss, n, state, {}
            b = {k: v.to(dev) for k, v in batch.items()}
            if self.cfg.task == "chat":
                loss, n = token_nll(m(b["src"], b["src_len"], b["tgt_in"])[0], b["tgt_out"], ls)
                return loss, n, None, {}
            out = m(b["ids"], b["lengths"])
            labelled = b["label"] >= 0
            loss = F.cross_entropy(out["logits"].float(), b["label"], ignore_index=-1, reduction="sum",
                                   label_smoothing=ls)
            extra = {"correct": float((out["logits"].argmax(-1) == b["label"])[labelled].sum()),
                     "labelled": float(labelled.sum())}
            if "rating" in out:
                # ratings run -4..+4: scaled to -1..1 so the two losses have comparable sizes
                loss = loss + self.cfg.rating_weight * F.mse_loss(out["rating"].float(), b["rating"] / 4,
                                                                  reduction="sum")
            return loss, torch.tensor(len(b["label"]), device=dev), None, extra

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        total = count = correct = labelled = 0.0
        state = None
        for batch in self.val_batches():
            loss, n, state, extra = self.batch_loss(batch, state, train=False)
            total, count = total + float(loss), count + float(n)
            correct += extra.get("correct", 0)
            labelled += extra.get("labelled", 0)
        self.model.train()
        result = {"val_loss": total / max(count, 1)}
        if self.cfg.task in ("lm", "chat"):
            result["val_token_perplexity"] = math.exp(min(result["val_loss"], 50))
        if self.cfg.task == "sentiment":
            result["val_accuracy"] = correct / max(labelled, 1)
        return result

    # bookkeeping -------------------------------------------------------------------
    def log(self, record: dict):
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ckpt.LOG, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def provenance(self) -> dict:
        return {"train": {k: v for k, v in asdict(self.cfg).items() if k != "model"},
                "data": {"corpus": self.cfg.corpus, "train_rows": len(self.data["train"]),
                         "sources": {n: source_of(n) for n in self.cfg.corpus}},
                "progress": {"step": self.step, "epoch": self.epoch, "best_val_loss": self.best}}

    def save_resume(self):
        if self.main:
            ckpt.save_training_state(self.out / "resume", self.model, self.opt, self.sched,
                                     {"step": self.step, "epoch": self.epoch, "pos": self.pos, "best": self.best,
                                      "bad_evals": self.bad_evals})

    def after_eval(self, metrics: dict):
        self.log({"step": self.step, "epoch": self.epoch, **metrics})
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(metrics["val_loss"])
        if metrics["val_loss"] < self.best:
            self.best, self.bad_evals = metrics["val_loss"], 0
            if self.main:
                ckpt.save_checkpoint(self.out, self.model, self.tok, self.provenance(), half=self.cfg.half)
        else:
            self.bad_evals += 1
            if self.cfg.patience and self.bad_evals >= self.cfg.patience:
                raise Stop(f"early stop: no gain in {self.bad_evals} evaluations")

    # the loop ------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        if cfg.resume:
            if (self.out / "resume" / "state.json").exists():
                info = ckpt.load_training_state(self.out / "resume", self.model, self.opt, self.sched)
                self.step, self.epoch, self.pos = info["step"], info["epoch"], info["pos"]
                self.best, self.bad_evals = info["best"], info["bad_evals"]
                print(f"resuming {self.out} at step {self.step} (epoch {self.epoch})", file=sys.stderr)
            else:
                print(f"nothing to resume in {self.out}; starting fresh", file=sys.stderr)
        max_steps = 3 if cfg.dry_run else cfg.max_steps
        deadline = time.time() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        self.log({"event": "start", "step": self.step, "config": asdict(cfg), "world_size": self.world,
                  "device": str(self.device), "parameters": sum(p.numel() for p in self.model.parameters())})
        stop = {"signal": None}

        def on_term(signum, frame):  # finish the step in hand, save, leave
            stop["signal"] = signum
        old = signal.signal(signal.SIGTERM, on_term) if self.main else None
        self.model.train()
        t0, tokens, since = time.time(), 0.0, 0.0
        bar = tqdm(total=max_steps or self.total_steps(), initial=self.step, disable=not self.main,
                   desc=f"train {cfg.task}", dynamic_ncols=True)
        try:
            while self.epoch < cfg.epochs:
                batches = self.epoch_batches(self.epoch)
                state = None
                while self.pos < len(batches):
                    if stop["signal"] is not None:
                        raise Stop("stopped by SIGTERM")
                    loss, n, state = self.train_step(batches[self.pos], state)
                    self.pos += 1
                    self.step += 1
                    tokens += float(n)
                    since += float(loss) * float(n)
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == 1:
                        rate = tokens / max(time.time() - t0, 1e-9)
                        self.log({"step": self.step, "epoch": self.epoch, "train_loss": since / max(tokens, 1),
                                  "lr": self.opt.param_groups[0]["lr"], "items_per_s": rate})
                        bar.set_postfix(loss=f"{float(loss):.3f}")
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        self.after_eval(self.evaluate())
                    if cfg.save_every and self.step % cfg.save_every == 0:
                        self.save_resume()  # so even a hard kill loses at most save_every steps
                    if max_steps and self.step >= max_steps:
                        raise Stop(f"reached max_steps={max_steps}")
                    if time.time() > deadline:
                        raise Stop(f"reached max_minutes={cfg.max_minutes}")
                self.epoch, self.pos = self.epoch + 1, 0
                if not cfg.eval_every:
                    self.after_eval(self.evaluate())
                self.save_resume()
            self.stop_reason = f"finished {cfg.epochs} epochs"
        except Stop as s:
            self.stop_reason = str(s)
            if s.args[0].startswith("reached"):  # a budget ran out: keep what the last stretch learned
                self.final_eval()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted (Ctrl-C)"
        finally:
            bar.close()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        self.save_resume()
        self.ensure_checkpoint()
        self.log({"event": "stop", "step": self.step, "reason": self.stop_reason, "best_val_loss": self.best})
        return {"step": self.step, "reason": self.stop_reason, "best_val_loss": self.best, "out": str(self.out)}

    def final_eval(self):
        try:
            self.after_eval(self.evaluate())
        except Stop:
            pass  # no gain: patience bookkeeping only

    def ensure_checkpoint(self):
        """A run stopped before its first evaluation still leaves a loadable checkpoint."""
        if self.main and not (self.out / ckpt.CONFIG).exists():
            metrics = self.evaluate()
            self.log({"step": self.step, "epoch": self.epoch, **metrics})
            self.best = min(self.best, metrics["val_loss"])
            ckpt.save_checkpoint(self.out, self.model, self.tok, self.provenance(), half=self.cfg.half)

    def train_step(self, batch, state):
        cfg = self.cfg
        if state is not None:  # truncated BPTT: keep the state, cut the graph
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss_sum, n, state, _ = self.batch_loss(batch, state)
        loss = loss_sum / n.clamp(min=1)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if isinstance(self.sched, torch.optim.lr_scheduler.LambdaLR):
            self.sched.step()
        return loss.detach(), n, state


def run(argv: list[str]) -> int:
    cfg = resolve_config(argv)
    tmp = None
    if cfg.dry_run and "--out" not in argv:
        tmp = tempfile.mkdtemp(prefix="nlp-dry-run-")
        cfg.out = tmp
    trainer = Trainer(cfg)
    result = trainer.fit()
    if trainer.main:
        print(json.dumps(result))
        if not cfg.dry_run:
            print(f"checkpoint: {cfg.out}  (evaluate: python -m nlp eval --checkpoint {cfg.out} "
                  f"--corpus {cfg.corpus[0]} --split test)", file=sys.stderr)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0
