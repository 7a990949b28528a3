"""The three tasks behind one interface: what the Trainer, `eval` and the CLI need to know about a task.

A Task owns its examples and batches, its loss, its validation score and its recipe defaults; its evaluation
(metrics beside baselines) is in nlp/evaluate.py, which reads TASKS. The Trainer loops over any task and names
none of them; adding a fourth (translation, forecasting) means one class here, registered in TASKS, its model
in nlp/models.py and its evaluation in nlp/evaluate.py.

    task = TASKS["lm"](cfg, device)            # cfg: a TrainConfig
    task.prepare(splits, tokenizer, rank, world)
    model = task.build_model(vocab_size)
    loss, count, carry, extra = task.loss(net, batch, carry, train=True)   # summed loss over `count` items
    task.validate()                            # {"val_loss": ..., task-specific scores}
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter

import torch
import torch.nn.functional as F

from nlp import data as D
from nlp.errors import ConfigError, CorpusError
from nlp.models import LanguageModel, SentimentClassifier, Seq2Seq
from nlp.rnn import row_mean_logprob, token_nll
from nlp.tokenizer import PAD, SEP, UNK, Tokenizer


class Task:
    name: str
    model_class: type
    defaults: dict = {}                     # TrainConfig values this task needs when neither recipe nor flag sets them
    decodes = False                         # its evaluation generates text (takes a GenerationConfig)
    init_names: dict[str, dict[str, str]] = {}  # init_from: source task -> {prefix there: prefix here}

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model, self.tokenizer = None, None
        self.rank, self.world = 0, 1

    # data ---------------------------------------------------------------------------
    def prepare(self, splits: dict, tok: Tokenizer, rank: int = 0, world: int = 1) -> None:
        """Token ids for the train and validation splits (self.train_data, self.val_data)."""
        self.rank, self.world = rank, world
        self.train_data, self.val_data = self.examples(splits["train"], tok, train=True), \
            self.examples(splits["validation"], tok, train=False)
        if not len(self.train_data):
            raise CorpusError("no training examples after tokenization")
        if not len(self.val_data):  # an empty one would read as a perfect validation loss of 0.0
            raise CorpusError(f"no validation examples after tokenization (the corpus's validation split has "
                              f"{len(splits['validation'])} rows): model choice needs validation data")

    def examples(self, ds, tok: Tokenizer, train: bool):
        raise NotImplementedError

    def epoch_batches(self, epoch: int) -> list:
        """This process's batches for an epoch: the same seeded order everywhere, so --resume can skip ahead."""
        batches = D.batches_of(self.train_data, self.cfg.batch_size, random.Random(self.cfg.seed * 1000 + epoch))
        per = len(batches) // self.world
        return batches[self.rank * per:(self.rank + 1) * per]  # equal counts, or DDP would wait forever

    def val_batches(self) -> list:
        """Validation batches; with --eval-batches N, N batches of a fixed random sample of the examples.
        (Batches are built in length order, so the first N batches alone would be the N shortest ones.)"""
        cfg, examples = self.cfg, self.val_data
        if cfg.eval_batches and len(examples) > cfg.eval_batches * cfg.eval_batch_size:
            examples = random.Random(cfg.seed).sample(examples, cfg.eval_batches * cfg.eval_batch_size)
        return D.batches_of(examples, cfg.eval_batch_size, None)

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    # model ----------------------------------------------------------------------------
    def build_model(self, vocab_size: int):
        self.model = self.model_class.from_config({**self.cfg.model, "vocab_size": vocab_size}).to(self.device)
        return self.model

    def after_init_from(self, source_task: str, taken: list[str]) -> None:
        """Called once init_from copied the weights named in `taken` from a model of `source_task`."""

    # loss and validation -----------------------------------------------------------------
    def loss(self, net, batch, carry, train: bool) -> tuple[torch.Tensor, torch.Tensor, object, dict]:
        """(summed loss, number of items it sums over, carried state, extra sums for validation).
        `net` is what the forward goes through (the DDP wrapper in training, so gradients are averaged)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self) -> dict:
        """Scores on the validation batches (the model in eval mode, under the caller's autocast)."""
        sums: Counter = Counter()
        carry = None
        for batch in self.val_batches():
            loss, n, carry, extra = self.loss(self.model, batch, carry, train=False)
            sums["loss"] += float(loss)
            sums["count"] += float(n)
            sums.update(extra)
        return self.summary(sums)

    def summary(self, sums: Counter) -> dict:
        return {"val_loss": sums["loss"] / max(sums["count"], 1)}


class LMTask(Task):
    """Next-token prediction over one long stream of text, read in windows; loss() returns the recurrent state
    and the Trainer hands it to the next window (truncated BPTT)."""
    name, model_class = "lm", LanguageModel
    defaults = {"corpus": ["wikitext2"]}

    def prepare(self, splits, tok, rank=0, world=1):
        train = D.lm_stream(splits["train"], tok)
        if world > 1:  # each process reads its own stretch of the text
            per = train.numel() // world
            train = train[rank * per:(rank + 1) * per]
        self.rank, self.world = rank, world
        self.train_data = D.batchify(train, self.cfg.batch_size)
        self.val_data = D.batchify(D.lm_stream(splits["validation"], tok), self.cfg.eval_batch_size)

    def epoch_batches(self, epoch):
        return D.lm_windows(self.train_data, self.cfg.bptt)

    def val_batches(self):
        b = D.lm_windows(self.val_data, self.cfg.bptt)  # contiguous text: the first N windows are as good as any
        return b[: self.cfg.eval_batches] if self.cfg.eval_batches else b

    def loss(self, net, batch, carry, train):
        hidden, carry = net(batch[0].to(self.device), carry)
        ls = self.cfg.label_smoothing if train else 0.0
        loss, n = self.model.loss_from_hidden(hidden, batch[1].to(self.device), ls)
        return loss, n, carry, {}

    def summary(self, sums):
        out = super().summary(sums)
        out["val_token_perplexity"] = math.exp(min(out["val_loss"], 50))
        return out


class ChatTask(Task):
    """Reply generation from the last turns (encoder-decoder with attention), plus the next-reply head."""
    name, model_class = "chat", Seq2Seq
    defaults = {"corpus": ["chitchat", "cornell"]}
    decodes = True
    # the LM's recurrent stack becomes the decoder; its output layer (out.*) is the chat model's under that name
    init_names = {"lm": {"rnn.": "decoder."}}

    def prepare(self, splits, tok, rank=0, world=1):
        super().prepare(splits, tok, rank, world)
        self.tokenizer = tok  # validation counts the replies' words, for the word perplexity

    def examples(self, ds, tok, train):
        c = self.cfg
        return D.chat_examples(ds, tok, c.context_turns, c.max_src_len, c.max_tgt_len)

    def after_init_from(self, source_task, taken):
        if source_task == "lm" and "decoder.weight_hh_l0" in taken:
            self.model.pass_decoder_through()  # start out as the LM, then learn to read the context

    def loss(self, net, batch, carry, train):
        """Reply NLL, plus (in training) the next-reply loss when the model has that head: each context of the
        batch picks its own reply among the batch's replies (the others are the distractors; TransferTransfo,
        Wolf et al. 2019). In training, `empty_context_rate` of the contexts are replaced by an empty one (a lone
        <sep>), so the same model also learns p(reply) alone, the denominator of the mutual-information score.
        With `context_contrast` > 0, a hinge term asks each reply to be likelier (mean log-probability per token)
        under its own context than under another row's by `context_margin` nats: the generator itself, not only
        the head, learns to prefer the reply that fits. The validation loss is the reply NLL alone; validation
        also sums the ranking accuracy, the context gain (the NLL with each context swapped for the previous
        row's of its batch, minus the NLL with its own; `eval`'s context_gain swaps by a seeded derangement)
        and the replies' words (for the word perplexity, issue 11's other bar)."""
        cfg, b = self.cfg, self.to_device(batch)
        src, src_len = b["src"], b["src_len"]
        B = src.shape[0]
        real = torch.ones(B, dtype=torch.bool, device=src.device)
        if train and cfg.empty_context_rate:
            real = torch.rand(B, device=src.device) >= cfg.empty_context_rate
            src = torch.where(real.unsqueeze(1), src, torch.full_like(src, PAD))
            src[~real, 0] = SEP
            src_len = torch.where(real, src_len, torch.ones_like(src_len))
        tgt_in = b["tgt_in"]
        if train and cfg.word_dropout:  # not in the empty-context rows, which learn p(reply) for the MI score
            drop = (torch.rand(tgt_in.shape, device=src.device) < cfg.word_dropout) & (tgt_in != PAD)
            drop[:, 0] = False  # BOS
            tgt_in = tgt_in.masked_fill(drop & real.unsqueeze(1), UNK)
        ranked = self.model.config.rank_dim > 0 and B > 1
        swapped = B > 1 and (not train or cfg.context_contrast > 0)  # each reply also under another's context
        out = net(src, src_len, tgt_in, *((b["reply"], b["reply_len"]) if ranked else ()), swap_contexts=swapped)
        logits = out[0][:B]
        loss, n = token_nll(logits, b["tgt_out"], cfg.label_smoothing if train else 0.0)
        extra = {}
        if not train and self.tokenizer is not None:
            extra["words"] = float(D.target_words(self.tokenizer, b["tgt_out"]))
        if swapped and train:
            # the reply must be likelier, per token, under its own context than under the previous row's by a
            # margin (left out: rows where either context was emptied for the prior, or both are the same text)
            both = real & real.roll(1, 0) & (src != src.roll(1, 0)).any(1)
            gap = row_mean_logprob(logits, b["tgt_out"]) - row_mean_logprob(out[0][B:], b["tgt_out"])
            hinge = F.relu(cfg.context_margin - gap)[both].sum() / both.sum().clamp(min=1)
            loss = loss + cfg.context_contrast * hinge * n
        elif swapped:
            other = token_nll(out[0][B:], b["tgt_out"])[0]
            extra.update(gain=float((other - loss).detach()), gain_tokens=float(n))
        if ranked:
            scores = out[2]
            same = (b["reply"].unsqueeze(1) == b["reply"].unsqueeze(0)).all(-1)  # a repeated reply is no distractor
            scores = scores.masked_fill(same & ~torch.eye(B, dtype=torch.bool, device=src.device), float("-inf"))
            target = torch.arange(B, device=src.device)
            rank = F.cross_entropy(scores[real], target[real], reduction="sum")
            if train:
                loss = loss + cfg.rank_weight * rank / real.sum().clamp(min=1) * n
            extra.update(rank_correct=float((scores[real].argmax(-1) == target[real]).sum()),
                         rank_rows=float(real.sum()), rank_loss=float(rank.detach()))
        return loss, n, None, extra

    def summary(self, sums):
        out = super().summary(sums)
        out["val_token_perplexity"] = math.exp(min(out["val_loss"], 50))
        if sums["words"]:  # exp(total NLL / words), words counted as eval counts them (replies cut as trained)
            out["val_word_perplexity"] = math.exp(min(out["val_loss"] * sums["count"] / sums["words"], 50))
        if sums["gain_tokens"]:
            out["val_context_gain"] = sums["gain"] / sums["gain_tokens"]
        if sums["rank_rows"]:  # hits@1 among the batch's replies (eval_batch_size candidates)
            out["val_rank_accuracy"] = sums["rank_correct"] / sums["rank_rows"]
            out["val_rank_loss"] = sums["rank_loss"] / sums["rank_rows"]
        return out


class SentimentTask(Task):
    """Binary label and -4..+4 rating of a text (BiLSTM with attention pooling, two heads)."""
    name, model_class = "sentiment", SentimentClassifier
    defaults = {"corpus": ["vader-movies", "vader-tweets", "vader-amazon", "vader-nyt"]}
    init_names = {"lm": {"rnn.": "encoder."}}  # the LM's layers become the forward half of the encoder

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.teacher = None  # distill_from's model, loaded here: a wrong path or model fails before training starts
        if cfg.distill_from:
            from nlp.checkpoint import load_checkpoint

            self.teacher = load_checkpoint(cfg.distill_from, device, task="sentiment").model.eval()

    def examples(self, ds, tok, train):
        if train and self.cfg.negation_augment:
            import datasets

            from nlp.augment import augment

            blank = dict.fromkeys(ds.column_names)  # columns the rules do not write (an id) stay empty
            extra = [{**blank, **r} for r in augment(list(ds), self.cfg.negation_augment, seed=self.cfg.seed)]
            ds = datasets.concatenate_datasets([ds, datasets.Dataset.from_list(extra, features=ds.features)])
            if self.rank == 0:
                print(f"negation augmentation: {len(extra)} extra training sentences", file=sys.stderr)
        if train and self.cfg.neutral_corpus and self.cfg.neutral_rows > 0:
            ds = self.with_neutral(ds)
        return D.sentiment_examples(ds, tok, self.cfg.max_len)

    def with_neutral(self, ds):
        """`ds` plus neutral_rows sentences of neutral_corpus's training split that VADER's lexicon rates 0:
        rating 0, and both labels equally likely (D.NO_OPINION; never distilled: the teacher has an opinion)."""
        import datasets

        from nlp.augment import neutral_sentences
        from nlp.corpora import load_corpus

        split = load_corpus(self.cfg.neutral_corpus)["train"]
        column = next((c for c in ("response", "text") if c in split.column_names), None)
        if column is None:
            raise ConfigError(f"neutral_corpus {self.cfg.neutral_corpus!r} has no response or text column")
        texts = neutral_sentences(list(split[column]), self.cfg.neutral_rows, seed=self.cfg.seed)
        blank = dict.fromkeys(ds.column_names)
        rows = [{**blank, "text": t, "label": D.NO_OPINION, "rating": 0.0} for t in texts]
        if "domain" in ds.column_names:
            for r in rows:
                r["domain"] = "neutral"
        if self.rank == 0:
            print(f"neutral sentences: {len(rows)} from {self.cfg.neutral_corpus}", file=sys.stderr)
        return datasets.concatenate_datasets([ds, datasets.Dataset.from_list(rows, features=ds.features)])

    def loss(self, net, batch, carry, train):
        b = self.to_device(batch)
        out = net(b["ids"], b["lengths"])
        neutral = b["label"] == D.NO_OPINION  # neutral_corpus rows: both labels equally likely
        labels = b["label"].masked_fill(neutral, -1)
        labelled = labels >= 0
        loss = F.cross_entropy(out["logits"].float(), labels, ignore_index=-1, reduction="sum",
                               label_smoothing=self.cfg.label_smoothing if train else 0.0)
        if neutral.any():  # cross-entropy against the uniform distribution over the labels
            loss = loss - F.log_softmax(out["logits"][neutral].float(), -1).mean(-1).sum()
        extra = {"correct": float((out["logits"].argmax(-1) == labels)[labelled].sum()),
                 "labelled": float(labelled.sum())}
        if "rating" in out:
            # ratings run -4..+4: scaled to -1..1 so the two losses have comparable sizes
            loss = loss + self.cfg.rating_weight * F.mse_loss(out["rating"].float(), b["rating"] / 4, reduction="sum")
        if train and self.teacher is not None:
            loss = loss + self.cfg.distill_weight * self.distillation(out, b)
        return loss, torch.tensor(len(b["label"]), device=self.device), None, extra

    def distillation(self, out: dict, b: dict) -> torch.Tensor:
        """Learning without forgetting (Li & Hoiem 2016), on the rows the teacher (distill_from) gets right:
        what it does well stays, while the labels still teach what it gets wrong (e.g. augmented negations)."""
        with torch.no_grad():
            t = self.teacher(b["ids"], b["lengths"])
        right = (t["logits"].argmax(-1) == b["label"]).float()
        kl = F.kl_div(F.log_softmax(out["logits"].float(), -1), F.log_softmax(t["logits"].float(), -1),
                      log_target=True, reduction="none").sum(-1)
        loss = (right * kl).sum()
        if "rating" in out and "rating" in t:
            loss = loss + self.cfg.rating_weight * (right * (out["rating"].float() - t["rating"].float()) ** 2).sum()
        return loss

    def summary(self, sums):
        return {**super().summary(sums), "val_accuracy": sums["correct"] / max(sums["labelled"], 1)}


TASKS: dict[str, type[Task]] = {t.name: t for t in (LMTask, ChatTask, SentimentTask)}
