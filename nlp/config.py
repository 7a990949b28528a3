"""The training configuration: read from a TOML recipe and overridden from the command line.

TrainConfig holds the settings every task has (data, batching, optimisation, schedule, stopping, saving);
LMTrainConfig, ChatTrainConfig and SentimentTrainConfig add their task's own, so a run's config (and the
checkpoint's config.json) holds its task's settings only. Every field is a flag (`--batch-size 64`, `--no-amp`,
`--corpus a.txt,b.txt`); a task's flag given to a run of another task is an error that says whose it is. Model
settings live in the recipe's [model] table and are overridden with `--model.KEY VALUE`. Unknown keys are
errors, so a typo never silently trains the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from nlp.errors import ConfigError, OneLineParser
from nlp.tasks import TASKS


@dataclass
class TrainConfig:
    """The settings of every task's training run."""
    task: str = field(default="lm", metadata={"help": "lm | chat | sentiment"})
    corpus: list[str] = field(default_factory=list, metadata={
        "help": "corpus names, hf:NAME or files; several are concatenated (default: the task's, nlp/tasks.py)"})
    out: str = field(default="", metadata={"help": "run folder = checkpoint folder (default runs/<task>)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer.model to use; empty = train one"})
    tokenizer_corpus: list[str] = field(default_factory=list,
                                        metadata={"help": "corpora for a new tokenizer (default: --corpus)"})
    vocab_size: int = field(default=8000, metadata={"help": "size of a newly trained tokenizer"})
    init_from: str = field(default="", metadata={"help": "checkpoint whose matching weights start this model"})
    init_lr_scale: float = field(default=1.0, metadata={
        "help": "learning-rate multiplier for the weights init_from copied (ULMFiT's discriminative fine-tuning)"})
    # batching
    batch_size: int = field(default=32, metadata={"help": "sequences per batch (per process under torchrun)"})
    eval_batch_size: int = field(default=32, metadata={"help": "sequences per evaluation batch"})
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
    epochs: int = field(default=10, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no limit)"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop (resumably) after this long (0 = no limit)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0 = once per epoch)"})
    eval_batches: int = field(default=0, metadata={"help": "validation batches per evaluation (0 = all)"})
    patience: int = field(default=3, metadata={
        "help": "early stop after this many evaluations without gain (0 = never)"})
    keep: str = field(default="best", metadata={
        "help": "best: the checkpoint is the model of the lowest validation loss | last: the model at each "
                "evaluation (for an objective the validation loss is not, e.g. chat's context_contrast)"})
    log_every: int = field(default=50, metadata={"help": "log the training loss every N steps"})
    max_nonfinite: int = field(default=5, metadata={"help": "stop after this many steps in a row whose loss or "
                                                            "gradient is not finite (each is skipped)"})
    save_every: int = field(default=500, metadata={"help": "save the resume state every N steps (0 = only at "
                                                           "evaluations and stops)"})
    seed: int = field(default=1234, metadata={"help": "seed for init, shuffling and dropout"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) | cpu | cuda | cuda:N"})
    amp: bool = field(default=True, metadata={"help": "mixed precision where the hardware has it: bfloat16/float16 "
                                                      "on CUDA, bfloat16 on a CPU with AVX512-BF16 or AMX"})
    half: bool = field(default=False, metadata={"help": "store checkpoint weights in float16"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from resume/"})
    dry_run: bool = field(default=False, metadata={"help": "a few steps on a slice of the data, to a temp folder"})
    model: dict = field(default_factory=dict, metadata={"help": "model settings ([model] table, --model.KEY V)"})


@dataclass
class LMTrainConfig(TrainConfig):
    """The language model's run: truncated back-propagation through time over a token stream."""
    bptt: int = field(default=70, metadata={"help": "tokens per truncated-BPTT window"})


@dataclass
class ChatTrainConfig(TrainConfig):
    """The chat model's run: context and reply lengths and the objective's extra terms."""
    context_turns: int = field(default=3, metadata={"help": "earlier turns given to the encoder"})
    max_src_len: int = field(default=96, metadata={"help": "context tokens kept (the newest)"})
    max_tgt_len: int = field(default=40, metadata={"help": "response tokens kept"})
    rank_weight: float = field(default=1.0, metadata={"help": "weight of the next-reply loss (models with "
                                                              "model.rank_dim > 0)"})
    empty_context_rate: float = field(default=0.0, metadata={
        "help": "fraction of training contexts replaced by an empty one, so the model also learns p(reply)"})
    context_contrast: float = field(default=0.0, metadata={
        "help": "weight of a hinge loss asking each reply to be likelier under its own context than under "
                "another row's by context_margin nats a token (0 = off; costs a second decoder pass)"})
    context_margin: float = field(default=0.5, metadata={"help": "the margin of context_contrast"})
    word_dropout: float = field(default=0.0, metadata={
        "help": "fraction of the decoder's teacher-forced input tokens replaced by <unk> in training "
                "(Bowman et al. 2016), so that the decoder leans on the context rather than on the reply so far"})


@dataclass
class SentimentTrainConfig(TrainConfig):
    """The sentiment classifier's run: text length, the rating loss and the added training rows."""
    max_len: int = field(default=128, metadata={"help": "tokens kept per text"})
    rating_weight: float = field(default=0.5, metadata={"help": "weight of the rating (MSE) loss"})
    negation_augment: float = field(default=0.0, metadata={
        "help": "add this fraction of negated and 'A, but B' copies of the training sentences "
                "(nlp.augment)"})
    neutral_corpus: str = field(default="", metadata={
        "help": "a corpus whose training sentences (a chat corpus's replies) with no word in VADER's "
                "lexicon join the training rows as neutral: rating 0, both labels equally likely "
                "(nlp.augment.neutral_sentences)"})
    neutral_rows: int = field(default=0, metadata={"help": "how many neutral_corpus sentences to add"})
    distill_from: str = field(default="", metadata={
        "help": "a trained classifier to keep agreeing with where it is right (learning without "
                "forgetting): on each training row whose label it predicts, the KL divergence from its label "
                "probabilities and the squared difference from its rating join the loss"})
    distill_weight: float = field(default=1.0, metadata={"help": "weight of the distill_from terms"})


TASK_CONFIGS: dict[str, type[TrainConfig]] = {"lm": LMTrainConfig, "chat": ChatTrainConfig,
                                              "sentiment": SentimentTrainConfig}


def own_fields(cls: type[TrainConfig]) -> list[dataclasses.Field]:
    """The fields a task's config adds to TrainConfig's."""
    common = {f.name for f in dataclasses.fields(TrainConfig)}
    return [f for f in dataclasses.fields(cls) if f.name not in common]


def task_of_setting(name: str) -> str | None:
    """The task whose config owns setting `name`, None for a setting every task has (or none has)."""
    return next((task for task, cls in TASK_CONFIGS.items() if name in {f.name for f in own_fields(cls)}), None)


# The range of every numeric setting: (lowest, highest, whether the highest is allowed). Sizes that allocate
# memory have a ceiling far above any run here, so that a typo (an extra zero or three) is an error, not an
# attempt to allocate terabytes.
BIG = 1_000_000_000
LIMITS = {
    **dict.fromkeys(("batch_size", "eval_batch_size", "bptt", "max_src_len", "max_tgt_len", "max_len"), (1, 65_536)),
    "vocab_size": (8, 1_000_000), "context_turns": (1, 64), "epochs": (1, BIG), "patience": (0, BIG),
    "log_every": (1, BIG), "max_nonfinite": (1, BIG),
    **dict.fromkeys(("max_train_examples", "warmup_steps", "max_steps", "eval_every", "eval_batches", "save_every",
                     "neutral_rows", "seed"), (0, BIG)),
    "lr": (1e-12, 100.0), "init_lr_scale": (0.0, 100.0), "momentum": (0.0, 1.0, False),
    **dict.fromkeys(("weight_decay", "clip", "rank_weight", "context_contrast", "context_margin", "rating_weight",
                     "distill_weight", "max_minutes", "negation_augment"), (0.0, 1e6)),
    "label_smoothing": (0.0, 1.0, False), **dict.fromkeys(("empty_context_rate", "word_dropout"), (0.0, 1.0)),
    "plateau_factor": (1e-6, 1.0, False),
}


def check_train_config(cfg: TrainConfig) -> None:
    """Every numeric setting a finite number of the right kind within LIMITS, as a ConfigError that names it
    (a batch size of 0 or a NaN learning rate would otherwise fail deep in training, or train on garbage)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name not in LIMITS:
            continue
        low, high, *closed = LIMITS[f.name]
        value, whole = getattr(cfg, f.name), hints[f.name] is int
        kind = isinstance(value, int) if whole else isinstance(value, (int, float))
        top_ok = closed[0] if closed else True
        if isinstance(value, bool) or not kind or not math.isfinite(value) or value < low \
                or value > high or (value == high and not top_ok):
            span = f"from {low:,} to {high:,}" if whole else f"from {low:g} to {'below ' * (not top_ok)}{high:g}"
            raise ConfigError(f"{f.name.replace('_', '-')} must be a {'whole number' if whole else 'number'} "
                              f"{span}, not {value!r}")


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


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m nlp train", description=description or __doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML recipe (configs/*.toml); flags below override it")
    _add_flags(p, TrainConfig, dataclasses.fields(TrainConfig))
    for task, cls in TASK_CONFIGS.items():
        _add_flags(p.add_argument_group(f"{task} settings (only with --task {task})"), cls, own_fields(cls))
    p.epilog = ("Model settings: --model.KEY VALUE, e.g. --model.hidden_size 200 --model.tie_weights false; "
                "the keys are those of LMConfig / Seq2SeqConfig / SentimentConfig in nlp/models.py.")
    return p


def _add_flags(group, cls: type[TrainConfig], fields) -> None:
    hints = typing.get_type_hints(cls)
    for f in fields:
        if f.name == "model":
            continue
        flag, typ = "--" + f.name.replace("_", "-"), hints[f.name]
        if typ is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            group.add_argument(flag, default=None, help=f"{f.metadata['help']} (default {_default(f)})",
                               type=str if typing.get_origin(typ) is list else typ)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def resolve_config(argv: list[str], description: str | None = None) -> TrainConfig:
    """TOML file, then command-line flags, then --model.KEY overrides, into the config of the run's task;
    unknown keys, and another task's settings, are errors."""
    parser = build_parser(description)
    args, rest = parser.parse_known_args(argv)
    values: dict = {}
    if args.config:
        try:
            values = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            parser.error(f"cannot read {args.config}: {e}")
    flags = {name: v for name, v in vars(args).items() if name != "config" and v is not None}
    task = flags.get("task", values.get("task", "lm"))
    if task not in TASKS:
        parser.error(f"--task must be one of {list(TASKS)}")
    cls = TASK_CONFIGS[task]
    known = {f.name for f in dataclasses.fields(cls)}
    for name in sorted((set(values) | set(flags)) - known):
        owner = task_of_setting(name)
        where = f"--{name.replace('_', '-')}" if name in flags else f"{args.config}: {name}"
        parser.error(f"{where} is a setting of task {owner}, not of {task}" if owner
                     else f"{args.config}: unknown setting {name!r}")
    hints = typing.get_type_hints(cls)
    for name, v in flags.items():
        values[name] = _cast(v, hints[name]) if isinstance(v, str) and hints[name] is not str else v
    model = dict(values.get("model", {}))
    for k, v in TASKS[task].defaults.items():
        values.setdefault(k, v)
    mhints = typing.get_type_hints(TASKS[task].model_class.Config)
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
    cfg = cls(**values)
    check_train_config(cfg)
    if not cfg.out:
        cfg.out = f"runs/{cfg.task}"
    return cfg
