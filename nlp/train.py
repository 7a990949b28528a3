"""One Trainer for every task (nlp/tasks.py): the loop, evaluation, checkpoints, resume (optimizer and schedule:
nlp/optim.py).

    python -m nlp train --config configs/lm.toml                   # the shipped recipe
    python -m nlp train --config configs/lm.toml --lr 1e-3 --model.hidden_size 200 --max-steps 100
    python -m nlp train --task lm --corpus wikitext2 --dry-run      # a few steps on the real corpus
    torchrun --nproc_per_node 4 -m nlp train --config configs/lm.toml   # data parallel (DDP)

The run folder (--out) is itself a checkpoint folder: the best model so far (by validation loss), its
tokenizer, `train_log.jsonl` (every metric, one JSON object a line) and `resume/` (nlp/train_state.py) so
`--resume` continues an interrupted run exactly where it stopped. Ctrl-C and SIGTERM ask the loop to stop; it
finishes the step in hand, saves and exits (a second Ctrl-C quits at once, keeping the last saved state).
--max-steps and --max-minutes stop the same way. A step whose loss or gradient is not finite is skipped (and
counted in the log); after --max-nonfinite of them in a row the run stops with an error.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from nlp import checkpoint as ckpt
from nlp import train_state
from nlp.config import TrainConfig, resolve_config
from nlp.corpora import corpus_texts, load_corpus, source_of, task_of
from nlp.errors import CheckpointError, ConfigError, CorpusError, TrainingError
from nlp.optim import build_optimizer, build_schedule, steps_every_batch, steps_on_plateau
from nlp.runtime import Runtime, StopRequests, seed_everything
from nlp.tasks import TASKS
from nlp.tokenizer import Tokenizer, train_tokenizer


class Stop(Exception):
    pass


def load_splits(cfg: TrainConfig) -> dict:
    """The train / validation / test splits of the configured corpora, concatenated (their common columns)."""
    from datasets import concatenate_datasets

    parts = [load_corpus(name) for name in cfg.corpus]
    tasks = {task_of(p) for p in parts}
    if tasks != {cfg.task}:
        raise CorpusError(f"task {cfg.task!r} cannot train on corpora of task(s) {sorted(tasks)}")
    splits = {}
    for s in ("train", "validation", "test"):
        common = set.intersection(*(set(p[s].column_names) for p in parts))
        splits[s] = concatenate_datasets([p[s].select_columns(sorted(common)) for p in parts])
    n = cfg.max_train_examples or (2000 if cfg.dry_run else 0)
    if n and len(splits["train"]) > n:
        splits["train"] = splits["train"].select(range(n))
    if cfg.dry_run:
        splits["validation"] = splits["validation"].select(range(min(200, len(splits["validation"]))))
    return splits


def detach(carry):
    """Truncated BPTT: keep the carried state's values, cut its graph."""
    if carry is None:
        return None
    return carry.detach() if torch.is_tensor(carry) else tuple(s.detach() for s in carry)


@dataclass
class Progress:
    """The counters the next step depends on (saved with the resume state)."""
    step: int = 0
    epoch: int = 0
    pos: int = 0                          # batches of this epoch already trained
    best: float = math.inf                # best validation loss of any evaluation: the saved checkpoint's
    patience_best: float = math.inf       # best of the scheduled evaluations, which alone drive early stopping
    bad_evals: int = 0                    # and the plateau schedule, so a stop's extra evaluation changes neither
    nonfinite: int = 0                    # steps skipped for a non-finite loss or gradient, in all
    nonfinite_run: int = 0                # ... in a row, up to now


@dataclass
class Window:
    """The training loss and speed over the steps since the previous log line (time spent in steps only)."""
    loss_sum: float = 0.0
    items: float = 0.0
    busy: float = 0.0

    def add(self, loss: float, items: float, seconds: float) -> None:
        self.loss_sum, self.items, self.busy = self.loss_sum + loss * items, self.items + items, self.busy + seconds

    def take(self) -> dict:
        """The window's train_loss and items_per_s; the window starts again."""
        out = {"train_loss": self.loss_sum / max(self.items, 1), "items_per_s": self.items / max(self.busy, 1e-9)}
        self.loss_sum = self.items = self.busy = 0.0
        return out


class Trainer:
    """Trains the model of `cfg.task` through the task interface (nlp/tasks.py: batches, loss, validation): set up
    (tokenizer, model, optimizer, schedule, a resumed state), then `fit` runs the epochs; `train_step` is one
    update, `after_eval` keeps the best checkpoint and drives the plateau schedule and early stopping."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.task not in TASKS:
            raise ConfigError(f"unknown task {cfg.task!r}: use one of {list(TASKS)}")
        if cfg.keep not in ("best", "last"):
            raise ConfigError(f"keep must be best or last, got {cfg.keep!r}")
        self.rt = Runtime.start(cfg.device, cfg.amp)
        self.device, self.rank, self.world, self.main = self.rt.device, self.rt.rank, self.rt.world, self.rt.main
        self.out = Path(cfg.out)
        seed_everything(cfg.seed)
        self.data = load_splits(cfg)
        self.tok = self._tokenizer()
        self.task = TASKS[cfg.task](cfg, self.device)
        self.task.prepare(self.data, self.tok, self.rank, self.world)
        self.model = self.task.build_model(self.tok.vocab_size)
        self.pretrained: set[str] = set()  # names of the weights init_from copied
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        if self.rank:  # DDP gives every rank rank 0's weights; dropout should differ between ranks
            torch.manual_seed(cfg.seed + self.rank)
        self.net = self.rt.wrap(self.model)
        self.opt = build_optimizer(self.model, cfg, self.pretrained)
        self.steps_per_epoch = len(self.task.epoch_batches(0))
        saved = self._saved_state() if cfg.resume else None
        # the schedule's length is fixed when a run starts: a resumed run keeps it, whatever --max-steps says now
        self.horizon = self.total_steps()
        if saved and "horizon" in saved[0] and saved[0]["horizon"] != self.horizon:
            if self.main:
                print(f"the learning-rate schedule keeps the length this run started with ({saved[0]['horizon']} "
                      f"steps; these settings would give {self.horizon})", file=sys.stderr)
            self.horizon = saved[0]["horizon"]
        self.sched = build_schedule(self.opt, cfg, self.horizon)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.rt.amp_dtype == torch.float16)
        self.p = Progress()
        self.carry = None  # the recurrent state carried from batch to batch (tasks that carry one)
        self.stop_reason = ""
        if saved:
            info, tensors = saved
            self.carry = train_state.restore(self.out / "resume", info, tensors, self.model, self.opt, self.sched,
                                             self.scaler, self.rank, self.device)
            self.p = Progress(**{k: info[k] for k in asdict(Progress()) if k in info})
            if "patience_best" not in info:  # a state saved before the two were told apart
                self.p.patience_best = self.p.best
            if self.main:
                print(f"resuming {self.out} at step {self.p.step} (epoch {self.p.epoch})", file=sys.stderr)

    # setup ------------------------------------------------------------------------------
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
        self.rt.barrier()
        return Tokenizer.load(own)

    def _saved_state(self):
        if not (self.out / "resume" / train_state.STATE).exists():
            if self.main:
                print(f"nothing to resume in {self.out}; starting fresh", file=sys.stderr)
            return None
        return train_state.read(self.out / "resume")

    def _init_from(self, path: Path):
        """Copy every weight whose name and shape match (e.g. an LM's embedding into the classifier)."""
        # drawing the source model's initialisation as loads always did keeps a seeded run's random stream
        # (dropout) the one the shipped recipes were trained with, so they retrain exactly
        src_ck = ckpt.load_checkpoint(path, draw_weights=True)
        own = self.model.state_dict()
        names = self.task.init_names.get(src_ck.task, {})
        taken = []
        for k, v in src_ck.model.state_dict().items():
            a = next((a for a in names if k.startswith(a)), None)  # the first rule that fits renames it
            k = names[a] + k[len(a):] if a else k
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                taken.append(k)
        if not taken:
            raise CheckpointError(f"{path}: no weight fits this model")
        self.task.after_init_from(src_ck.task, taken)
        self.pretrained = set(taken)
        self.log({"event": "init_from", "path": str(path), "tensors": taken})

    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.cfg.epochs
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    @property
    def amp_dtype(self):
        return self.rt.amp_dtype

    # one step ----------------------------------------------------------------------------
    def train_step(self, batch) -> tuple[float, float]:
        """Forward, backward, clip, update. -> (mean loss, items). A non-finite loss or gradient norm skips the
        update (every rank alike) and is counted; the step still counts (the batch is used up)."""
        cfg = self.cfg
        with self.rt.autocast():
            loss_sum, n, carry, _ = self.task.loss(self.net, batch, detach(self.carry), train=True)
        self.carry = carry
        loss = loss_sum / n.clamp(min=1)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # with float16 loss scaling an overflowing gradient is the scaler's business: it skips and rescales
        bad = not torch.isfinite(loss) or (not self.scaler.is_enabled() and not torch.isfinite(norm))
        (bad,) = self.rt.agree(bad)
        if bad:
            self.p.nonfinite += 1
            self.p.nonfinite_run += 1
            self.log({"event": "nonfinite", "step": self.p.step + 1, "loss": str(float(loss.detach())),
                      "grad_norm": str(float(norm))})
            self.opt.zero_grad(set_to_none=True)
        else:
            self.p.nonfinite_run = 0
            if cfg.clip:
                torch.nn.utils.clip_grads_with_norm_(params, cfg.clip, norm)
            self.scaler.step(self.opt)
        self.scaler.update()
        if steps_every_batch(self.sched):
            self.sched.step()
        return (0.0, 0.0) if bad else (float(loss.detach()), float(n))

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        with self.rt.autocast():
            metrics = self.task.validate()
        self.model.train()
        return metrics

    # bookkeeping ---------------------------------------------------------------------------
    def log(self, record: dict):
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ckpt.LOG, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def provenance(self, val_loss: float) -> dict:
        """What the saved checkpoint came from; `val_loss` is the saved model's own validation loss."""
        return {"train": {k: v for k, v in asdict(self.cfg).items() if k != "model"},
                "data": {"corpus": self.cfg.corpus, "train_rows": len(self.data["train"]),
                         "sources": {n: source_of(n) for n in self.cfg.corpus}},
                "progress": {"step": self.p.step, "epoch": self.p.epoch, "val_loss": val_loss,
                             "best_val_loss": self.p.best}}

    def save_resume(self):
        """The resume state; a collective call (every rank sends its carried state and RNG to rank 0)."""
        carries, rngs = train_state.gather_carries(self.rt, self.carry), train_state.gather_rng_states(self.rt)
        if self.main:
            train_state.save(self.out / "resume", self.model, self.opt, self.sched, self.scaler,
                             {**asdict(self.p), "horizon": self.horizon}, carries, rngs)

    def after_eval(self, metrics: dict, scheduled: bool = True):
        """Log; keep the checkpoint if this is the best so far (with keep = "last": at every evaluation).
        Scheduled evaluations (every eval_every steps or epoch) also drive the plateau schedule and early stopping;
        the one at a budget stop does not, so a run stopped and resumed makes the same decisions as one that never
        stopped."""
        self.log({"step": self.p.step, "epoch": self.p.epoch, **metrics})
        loss = metrics["val_loss"]
        if loss < self.p.best or self.cfg.keep == "last":
            self.p.best = min(loss, self.p.best)
            if self.main:
                ckpt.save_checkpoint(self.out, self.model, self.tok, self.provenance(loss), half=self.cfg.half)
        if not scheduled:
            return
        if steps_on_plateau(self.sched):
            self.sched.step(loss)
        if loss < self.p.patience_best:
            self.p.patience_best, self.p.bad_evals = loss, 0
        else:
            self.p.bad_evals += 1
            if self.cfg.patience and self.p.bad_evals >= self.cfg.patience:
                raise Stop(f"early stop: no gain in {self.p.bad_evals} evaluations")

    # the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until the epochs are done or a stop (a budget, a signal, early stopping, failing steps); keep
        the checkpoint and the resume state; -> what the run did."""
        cfg, p = self.cfg, self.p
        self.log({"event": "start", "step": p.step, "config": asdict(cfg), "world_size": self.world,
                  "device": str(self.device), "parameters": sum(q.numel() for q in self.model.parameters()),
                  "steps_per_epoch": self.steps_per_epoch, "schedule_steps": self.horizon})
        self.model.train()
        failed, refused = "", False
        with StopRequests(announce=self.main) as requests:
            try:
                self._epochs(requests)
                self.stop_reason = f"finished {cfg.epochs} epochs"
                if cfg.eval_every and p.step % cfg.eval_every:  # the steps since the last evaluation count too
                    self.after_eval(self.evaluate(), scheduled=False)
            except Stop as s:
                self.stop_reason = str(s)
                if self.stop_reason.startswith("reached"):  # a budget ran out: keep what the last stretch learned
                    self.after_eval(self.evaluate(), scheduled=False)
                elif "not finite" in self.stop_reason:
                    failed = self.stop_reason
            except (TrainingError, CheckpointError) as e:  # a save found non-finite weights and wrote nothing
                self.stop_reason = failed = str(e)
                refused = True
        if not refused:
            try:
                self.save_resume()
                self.ensure_checkpoint()
            except (TrainingError, CheckpointError) as e:  # non-finite weights: nothing new is written
                failed = f"{failed}; {e}" if failed else str(e)
        self.log({"event": "stop", "step": p.step, "reason": self.stop_reason, "best_val_loss": p.best})
        if failed:
            raise TrainingError(f"{failed}. The last finite state saved in {self.out / 'resume'} is kept: lower "
                                f"--lr or raise --warmup-steps, and --resume (or start again)")
        return {"step": p.step, "reason": self.stop_reason, "best_val_loss": p.best, "out": str(self.out)}

    def _epochs(self, requests: StopRequests) -> None:
        """The remaining epochs, batch by batch from where the run stands; evaluates and saves on schedule and
        raises Stop when the run must end early."""
        cfg, p = self.cfg, self.p
        max_steps = 3 if cfg.dry_run else cfg.max_steps
        deadline = time.time() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        window = Window()
        with tqdm(total=max_steps or self.total_steps(), initial=p.step, disable=not self.main,
                  desc=f"train {cfg.task}", dynamic_ncols=True) as bar:
            while p.epoch < cfg.epochs:
                batches = self.task.epoch_batches(p.epoch)
                while p.pos < len(batches):
                    start = time.perf_counter()
                    loss, n = self.train_step(batches[p.pos])
                    window.add(loss, n, time.perf_counter() - start)
                    p.pos, p.step = p.pos + 1, p.step + 1
                    bar.update(1)
                    if p.step % cfg.log_every == 0 or p.step == 1:
                        since = window.take()
                        self.log({"step": p.step, "epoch": p.epoch, **since, "lr": self.opt.param_groups[0]["lr"],
                                  **({"nonfinite_steps": p.nonfinite} if p.nonfinite else {})})
                        bar.set_postfix(loss=f"{since['train_loss']:.3f}")
                    self._on_schedule(requests, deadline, max_steps)
                p.epoch, p.pos, self.carry = p.epoch + 1, 0, None
                if not cfg.eval_every:
                    self.after_eval(self.evaluate())
                self.save_resume()

    def _on_schedule(self, requests: StopRequests, deadline: float, max_steps: int) -> None:
        """After a step: stop on failing steps, evaluate and save when due, stop on a signal or a budget."""
        cfg, p = self.cfg, self.p
        if p.nonfinite_run >= cfg.max_nonfinite:
            raise Stop(f"the loss or its gradient was not finite for {p.nonfinite_run} steps in a row (to step "
                       f"{p.step})")
        if cfg.eval_every and p.step % cfg.eval_every == 0:
            self.after_eval(self.evaluate())
        if cfg.save_every and p.step % cfg.save_every == 0:
            self.save_resume()  # so even a hard kill loses at most save_every steps
        # every rank stops at the same step, or the others would wait for it forever
        signalled, late = self.rt.agree(bool(requests.signal), time.time() > deadline)
        if signalled:
            raise Stop(requests.reason or "stopped by a signal to another process")
        if max_steps and p.step >= max_steps:
            raise Stop(f"reached max_steps={max_steps}")
        if late:
            raise Stop(f"reached max_minutes={cfg.max_minutes}")

    def ensure_checkpoint(self):
        """A run stopped before its first evaluation still leaves a loadable checkpoint."""
        if self.main and not (self.out / ckpt.CONFIG).exists():
            metrics = self.evaluate()
            self.log({"step": self.p.step, "epoch": self.p.epoch, **metrics})
            self.p.best = min(self.p.best, metrics["val_loss"])  # (after the resume state was saved)
            ckpt.save_checkpoint(self.out, self.model, self.tok, self.provenance(metrics["val_loss"]),
                                 half=self.cfg.half)


def run(argv: list[str]) -> int:
    cfg = resolve_config(argv, description=__doc__)
    if cfg.dry_run and "--out" not in argv:
        cfg.out = tempfile.mkdtemp(prefix="nlp-dry-run-")
    trainer = Trainer(cfg)
    rt, main = trainer.rt, trainer.main
    try:
        result = trainer.fit()
    finally:
        # under torchrun DDP holds the process group: released first, the group's threads end in rt.close(),
        # not while the interpreter shuts down
        del trainer
        gc.collect()
        rt.close()
    if main:
        print(json.dumps(result))
        if not cfg.dry_run:
            print(f"checkpoint: {cfg.out}  (evaluate: python -m nlp eval --checkpoint {cfg.out} "
                  f"--corpus {cfg.corpus[0]} --split test)", file=sys.stderr)
    return 0
