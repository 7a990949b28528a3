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

import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import datasets
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from nlp import checkpoint as ckpt
from nlp import data as D
from nlp.augment import augment
from nlp.config import TrainConfig, resolve_config
from nlp.corpora import CorpusError, load_corpus, source_of, task_of
from nlp.models import ConfigError, build_model, token_nll
from nlp.tokenizer import PAD, SEP, Tokenizer, corpus_texts, train_tokenizer


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


def all_reduce_sum(*values: float, device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------- the trainer
class Stop(Exception):
    pass


# init_from: how the weights of a source model's task are named in the model being trained
INIT_NAMES = {("sentiment", "lm"): {"rnn.": "encoder."},
              ("chat", "lm"): {"rnn.": "decoder.", "decoder.bias": "out.bias"}}  # the LM becomes the decoder


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
        self.pretrained: set[str] = set()  # names of the weights init_from copied
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = self._optimizer()
        self.sched = self._scheduler()
        self.amp_dtype = amp_dtype(self.device) if cfg.amp else None
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
            train = self.data["train"]
            if cfg.negation_augment:
                blank = dict.fromkeys(train.column_names)  # columns the rules do not write (an id) stay empty
                extra = [{**blank, **r} for r in augment(list(train), cfg.negation_augment, seed=cfg.seed)]
                train = datasets.concatenate_datasets([train, datasets.Dataset.from_list(extra,
                                                                                          features=train.features)])
                if self.rank == 0:
                    print(f"negation augmentation: {len(extra)} extra training sentences", file=sys.stderr)
            self.train_data = D.sentiment_examples(train, tok, cfg.max_len)
            self.val_data = D.sentiment_examples(self.data["validation"], tok, cfg.max_len)
        if not len(self.train_data):
            raise CorpusError("no training examples after tokenization")
        if not len(self.val_data):  # an empty one would read as a perfect validation loss of 0.0
            raise CorpusError(f"no validation examples after tokenization (the corpus's validation split has "
                              f"{len(self.data['validation'])} rows): model choice needs validation data")

    def epoch_batches(self, epoch: int) -> list:
        """This process's batches for an epoch: the same seeded order everywhere, so --resume can skip ahead."""
        if self.cfg.task == "lm":
            return D.lm_windows(self.train_data, self.cfg.bptt)
        batches = D.batches_of(self.train_data, self.cfg.batch_size, random.Random(self.cfg.seed * 1000 + epoch))
        per = len(batches) // self.world
        return batches[self.rank * per:(self.rank + 1) * per]  # equal counts, or DDP would wait forever

    def val_batches(self) -> list:
        """Validation batches; with --eval-batches N, N batches of a fixed random sample of the examples.

        (Batches are built in length order, so the first N batches alone would be the N shortest ones.)
        """
        cfg = self.cfg
        if cfg.task == "lm":  # contiguous text: the first N windows are as representative as any
            b = D.lm_windows(self.val_data, cfg.bptt)
            return b[: cfg.eval_batches] if cfg.eval_batches else b
        examples = self.val_data
        if cfg.eval_batches and len(examples) > cfg.eval_batches * cfg.eval_batch_size:
            examples = random.Random(cfg.seed).sample(examples, cfg.eval_batches * cfg.eval_batch_size)
        return D.batches_of(examples, cfg.eval_batch_size, None)

    # model pieces ----------------------------------------------------------------
    def _init_from(self, path: Path):
        """Copy every weight whose name and shape match (e.g. an LM's embedding into the classifier)."""
        src_ck = ckpt.load_checkpoint(path)
        source = src_ck.model.state_dict()
        own = self.model.state_dict()
        names = INIT_NAMES.get((self.cfg.task, src_ck.task), {})
        taken = []
        for k, v in source.items():
            a = next((a for a in names if k.startswith(a)), None)  # the first rule that fits renames it
            k = names[a] + k[len(a):] if a else k
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                taken.append(k)
        if not taken:
            raise ckpt.CheckpointError(f"{path}: no weight fits this model")
        if (self.cfg.task, src_ck.task) == ("chat", "lm") and "decoder.weight_hh_l0" in taken:
            self.model.pass_decoder_through()  # start out as the LM, then learn to read the context
        self.pretrained = set(taken)
        self.log({"event": "init_from", "path": str(path), "tensors": taken})

    def _optimizer(self):
        """One parameter group, or two under init_lr_scale: the new weights at lr, the copied ones at
        lr * init_lr_scale (ULMFiT: pretrained layers move slower, so fine-tuning keeps what they learned).
        The schedule scales every group alike."""
        c = self.cfg
        if c.init_lr_scale < 0:
            raise ConfigError(f"init_lr_scale must be >= 0 (0 freezes the copied weights), got {c.init_lr_scale}")
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        copied = [p for n, p in named if n in self.pretrained]
        params = [p for _, p in named]
        if c.init_lr_scale != 1.0 and copied:
            params = [{"params": [p for n, p in named if n not in self.pretrained]},
                      {"params": copied, "lr": c.lr * c.init_lr_scale}]
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        raise ConfigError(f"optimizer must be adamw or sgd, got {c.optimizer!r}")

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
            raise ConfigError(f"schedule must be cosine, plateau or constant, got {c.schedule!r}")
        total, warm = max(1, self.total_steps()), c.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

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
                return self.chat_loss(m, b, ls, train)
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

    def chat_loss(self, m, b: dict, ls: float, train: bool):
        """Reply NLL, plus the next-reply loss when the model has that head: each context of the batch picks
        its own reply among the batch's replies (the others are the distractors; TransferTransfo, Wolf et al.
        2019). In training, `empty_context_rate` of the contexts are replaced by an empty one (a lone <sep>),
        so the same model also learns p(reply) alone, the denominator of the mutual-information score."""
        cfg, src, src_len = self.cfg, b["src"], b["src_len"]
        B = src.shape[0]
        real = torch.ones(B, dtype=torch.bool, device=src.device)
        if train and cfg.empty_context_rate:
            real = torch.rand(B, device=src.device) >= cfg.empty_context_rate
            src = torch.where(real.unsqueeze(1), src, torch.full_like(src, PAD))
            src[~real, 0] = SEP
            src_len = torch.where(real, src_len, torch.ones_like(src_len))
        ranked = self.model.config.rank_dim > 0 and B > 1
        out = m(src, src_len, b["tgt_in"], *((b["reply"], b["reply_len"]) if ranked else ()))
        loss, n = token_nll(out[0], b["tgt_out"], ls)
        extra = {}
        if ranked:
            scores = out[2]
            same = (b["reply"].unsqueeze(1) == b["reply"].unsqueeze(0)).all(-1)  # a repeated reply is no distractor
            scores = scores.masked_fill(same & ~torch.eye(B, dtype=torch.bool, device=src.device), float("-inf"))
            target = torch.arange(B, device=src.device)
            rank = F.cross_entropy(scores[real], target[real], reduction="sum")
            loss = loss + cfg.rank_weight * rank / real.sum().clamp(min=1) * n
            extra = {"rank_correct": float((scores[real].argmax(-1) == target[real]).sum()),
                     "rank_rows": float(real.sum()), "rank_loss": float(rank.detach())}
        return loss, n, None, extra

    @torch.no_grad()
    def context_gain(self, batch) -> tuple[float, float]:
        """(summed reply NLL with each context swapped for the next row's, the same with the true contexts):
        how much the model reads its context, in nats."""
        b = {k: v.to(self.device) for k, v in batch.items()}
        with self.autocast():
            true = token_nll(self.model(b["src"], b["src_len"], b["tgt_in"])[0], b["tgt_out"])[0]
            other = token_nll(self.model(b["src"].roll(1, 0), b["src_len"].roll(1, 0), b["tgt_in"])[0],
                              b["tgt_out"])[0]
        return float(other), float(true)

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        total = count = correct = labelled = 0.0
        sums: dict[str, float] = {}
        state = None
        for batch in self.val_batches():
            loss, n, state, extra = self.batch_loss(batch, state, train=False)
            if "rank_loss" in extra:  # the generation loss alone is the validation loss
                loss = loss - self.cfg.rank_weight * extra["rank_loss"] / max(extra["rank_rows"], 1) * n
            total, count = total + float(loss), count + float(n)
            correct += extra.get("correct", 0)
            labelled += extra.get("labelled", 0)
            for k in ("rank_correct", "rank_rows", "rank_loss"):
                sums[k] = sums.get(k, 0.0) + extra.get(k, 0.0)
            if self.cfg.task == "chat" and len(batch["src"]) > 1:
                other, true = self.context_gain(batch)
                sums["gain"] = sums.get("gain", 0.0) + other - true
                sums["gain_tokens"] = sums.get("gain_tokens", 0.0) + float(n)
        self.model.train()
        result = {"val_loss": total / max(count, 1)}
        if self.cfg.task in ("lm", "chat"):
            result["val_token_perplexity"] = math.exp(min(result["val_loss"], 50))
        if sums.get("gain_tokens"):
            result["val_context_gain"] = sums["gain"] / sums["gain_tokens"]
        if sums.get("rank_rows"):  # hits@1 among the batch's replies (eval_batch_size candidates)
            result["val_rank_accuracy"] = sums["rank_correct"] / sums["rank_rows"]
            result["val_rank_loss"] = sums["rank_loss"] / sums["rank_rows"]
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
        # train_loss and items_per_s in the log cover the steps since the previous log line (time in steps only)
        busy, tokens, since = 0.0, 0.0, 0.0
        bar = tqdm(total=max_steps or self.total_steps(), initial=self.step, disable=not self.main,
                   desc=f"train {cfg.task}", dynamic_ncols=True)
        try:
            while self.epoch < cfg.epochs:
                batches = self.epoch_batches(self.epoch)
                state = None
                while self.pos < len(batches):
                    if stop["signal"] is not None:
                        raise Stop("stopped by SIGTERM")
                    t = time.perf_counter()
                    loss, n, state = self.train_step(batches[self.pos], state)
                    self.pos += 1
                    self.step += 1
                    tokens += float(n)
                    since += float(loss) * float(n)
                    busy += time.perf_counter() - t
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == 1:
                        self.log({"step": self.step, "epoch": self.epoch, "train_loss": since / max(tokens, 1),
                                  "lr": self.opt.param_groups[0]["lr"], "items_per_s": tokens / max(busy, 1e-9)})
                        bar.set_postfix(loss=f"{since / max(tokens, 1):.3f}")
                        busy, tokens, since = 0.0, 0.0, 0.0
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
            if cfg.eval_every and self.step % cfg.eval_every:  # the steps since the last evaluation count too
                self.final_eval()
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
    cfg = resolve_config(argv, description=__doc__)
    if cfg.dry_run and "--out" not in argv:
        cfg.out = tempfile.mkdtemp(prefix="nlp-dry-run-")
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
