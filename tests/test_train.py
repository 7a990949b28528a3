"""End to end on the committed fixtures: corpus -> tokenizer -> train -> checkpoint -> reload -> eval -> decode."""

import json
import math
import sys

import pytest
import torch

from nlp.checkpoint import load_checkpoint, read_train_log
from nlp.config import resolve_config
from nlp.decoding import GenerationConfig, make_generator
from nlp.errors import ConfigError
from nlp.evaluate import evaluate
from nlp.serve import chat_reply, classify, continue_text
from nlp.train import Trainer
from tests.conftest import CHAT, CORPUS, LM_TEXT, SENTIMENT, TINY, train_tiny


def log_of(folder):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_lm_end_to_end(trained):
    ck = load_checkpoint(trained["lm"])
    log = log_of(trained["lm"])
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0]  # it learns
    result = evaluate(ck, str(LM_TEXT), "test")
    m = result["metrics"]
    assert m["words"] > 0 and m["token_perplexity"] < ck.tokenizer.vocab_size  # better than uniform
    assert m["word_perplexity"] > m["token_perplexity"]  # fewer words than tokens: same NLL, bigger exponent
    assert "unigram_add_one" in result["baselines"]
    text = "".join(continue_text(ck, "The sea", GenerationConfig(max_new_tokens=20), make_generator(0)).stream)
    assert text.strip()


def test_chat_end_to_end(trained):
    ck = load_checkpoint(trained["chat"])
    result = evaluate(ck, str(CHAT), "test", max_examples=20, gen=GenerationConfig(strategy="greedy",
                                                                                  max_new_tokens=12))
    m = result["metrics"]
    for key in ("f1", "bleu", "distinct_1", "distinct_2", "token_perplexity", "word_perplexity"):
        assert key in m
    assert {"tfidf_retrieval", "most_frequent_reply"} <= set(result["baselines"])
    ids = ck.tokenizer.encode_turns(["hi, how are you?"], 96)
    reply = chat_reply(ck, ["hi, how are you?"], GenerationConfig(strategy="greedy", max_new_tokens=12))
    assert "".join(reply.stream) == reply.text and reply.reply_tokens  # (the tiny model's may be only spaces)
    assert len(reply.attention) >= 1 and all(len(row) == len(ids) for row in reply.attention)


def test_chat_eval_with_beam_search_scores_the_beam_replies(trained):
    from nlp.beam import beam_search
    from nlp.tokenizer import EOS

    ck = load_checkpoint(trained["chat"])
    gen = GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=10)
    m = evaluate(ck, str(CHAT), "test", max_examples=6, gen=gen)["metrics"]
    first = m["samples"][0]
    prompt = ck.tokenizer.encode_turns(first["context"], ck.config["train"]["max_src_len"]) or [EOS]
    assert first["reply"] == ck.tokenizer.decode(beam_search(ck.model, prompt, gen)[0][0])
    assert 0 <= m["f1"] <= 1 and "distinct_2" in m


def test_sentiment_end_to_end(trained):
    ck = load_checkpoint(trained["sentiment"])
    result = evaluate(ck, str(SENTIMENT), "test")
    m = result["metrics"]
    assert 0 <= m["accuracy"] <= 1 and "pearson" in m and "macro_f1" in m
    assert sum(map(sum, m["confusion"])) == m["n"]
    assert {"naive_bayes_bow", "vader_lexicon"} <= set(result["baselines"])
    out = classify(ck, ["great product, works perfectly", ""])
    assert len(out) == 2 and len(out[0]["attention"]) == len(out[0]["tokens"])
    assert abs(sum(out[0]["attention"]) - 1) < 1e-5


def test_sentiment_learns_the_training_set(tmp_path, tokenizer):
    """A can-fail check that the whole loop optimises: training accuracy rises well above chance."""
    out = tmp_path / "s"
    train_tiny("sentiment", out, tokenizer.path, "--epochs", "8", "--lr", "0.005", "--patience", "0")
    ck = load_checkpoint(out)
    from nlp.corpora import load_corpus
    train = load_corpus(str(SENTIMENT))["train"]
    rows = [(t, y) for t, y in zip(train["text"], train["label"]) if y >= 0]
    preds = classify(ck, [t for t, _ in rows])
    acc = sum(p["label"] == y for p, (_, y) in zip(preds, rows)) / len(rows)
    assert acc > 0.75


def test_eval_batches_sample_the_validation_set_not_its_shortest_examples(tmp_path, tokenizer):
    cfg = resolve_config(["--task", "sentiment", "--corpus", str(SENTIMENT), "--tokenizer", str(tokenizer.path),
                          "--out", str(tmp_path / "s"), "--eval-batches", "2", "--eval-batch-size", "4"])
    trainer = Trainer(cfg)
    every = sorted(len(e.ids) for e in trainer.task.val_data)
    picked = sorted(int(n) for b in trainer.task.val_batches() for n in b["lengths"])
    assert len(picked) == 8 and len(every) > 16
    assert picked != every[:8]  # not simply the shortest eight
    assert trainer.task.val_batches()[0]["ids"].equal(trainer.task.val_batches()[0]["ids"])  # the same sample each time


def test_a_finished_run_evaluates_the_steps_after_its_last_periodic_evaluation(tmp_path, tokenizer):
    out = tmp_path / "s"
    result = train_tiny("sentiment", out, tokenizer.path, "--epochs", "1", "--eval-every", "3")
    evals = [r["step"] for r in log_of(out) if "val_loss" in r]
    assert result["step"] % 3 and evals[-1] == result["step"]


@pytest.mark.parametrize("keep,saved_step", [("best", 2), ("last", 6)])
def test_keep_chooses_the_lowest_validation_loss_or_the_last_model(tmp_path, tokenizer, monkeypatch, keep,
                                                                   saved_step):
    """A validation loss that only rises (as chat's reply NLL may under context_contrast): keep = best stays with
    the first evaluation's model, keep = last takes each evaluation's; the config says which and its own loss."""
    real = Trainer.evaluate

    def rising(self):
        return {**real(self), "val_loss": float(self.p.step)}

    monkeypatch.setattr(Trainer, "evaluate", rising)
    out = tmp_path / keep
    train_tiny("sentiment", out, tokenizer.path, "--max-steps", "6", "--epochs", "3", "--eval-every", "2",
               "--patience", "0", "--keep", keep)
    progress = json.loads((out / "config.json").read_text())["progress"]
    assert progress["step"] == saved_step and progress["val_loss"] == saved_step and progress["best_val_loss"] == 2
    with pytest.raises(ConfigError, match="keep must be best or last"):
        train_tiny("sentiment", tmp_path / "bad", tokenizer.path, "--keep", "newest")


def test_resume_continues_where_it_stopped(tmp_path, tokenizer):
    out = tmp_path / "run"
    first = train_tiny("lm", out, tokenizer.path, "--max-steps", "7", "--epochs", "3")
    assert first["step"] == 7 and "max_steps" in first["reason"]
    assert (out / "resume" / "state.json").exists() and (out / "config.json").exists()
    state = json.loads((out / "resume" / "state.json").read_text())
    assert state["step"] == 7 and state["pos"] == 7
    second = train_tiny("lm", out, tokenizer.path, "--max-steps", "12", "--epochs", "3", "--resume")
    assert second["step"] == 12
    steps = [r["step"] for r in log_of(out) if "train_loss" in r]
    assert steps == [1, 5, 10]  # logged every 5 steps (and the first), across both runs
    starts = [r for r in log_of(out) if r.get("event") == "start"]
    assert [s["step"] for s in starts] == [0, 7]


def test_logged_train_loss_covers_the_steps_since_the_previous_line(tmp_path, tokenizer):
    """Two identical runs, logging every step and every 3 steps: each line of the second is the mean of the
    steps since its previous line (not of every step since the run began, which flattens the Models page curve)."""
    args = ["--max-steps", "6", "--epochs", "3", "--seed", "5"]
    train_tiny("lm", tmp_path / "every1", tokenizer.path, *args, "--log-every", "1")
    train_tiny("lm", tmp_path / "every3", tokenizer.path, *args, "--log-every", "3")
    per_step = {r["step"]: r["train_loss"] for r in log_of(tmp_path / "every1") if "train_loss" in r}
    lines = {r["step"]: r for r in log_of(tmp_path / "every3") if "train_loss" in r}
    assert sorted(lines) == [1, 3, 6] and len(per_step) == 6
    # every LM step holds the same number of tokens, so the mean over tokens is the mean of the step means
    assert lines[3]["train_loss"] == pytest.approx((per_step[2] + per_step[3]) / 2, rel=1e-5)
    assert lines[6]["train_loss"] == pytest.approx(sum(per_step[s] for s in (4, 5, 6)) / 3, rel=1e-5)
    assert all(r["items_per_s"] > 0 for r in lines.values())


def test_dry_run_writes_to_a_temporary_folder(tmp_path, capsys, tokenizer):
    from nlp.train import run

    assert run(["--task", "chat", "--corpus", str(CHAT), "--dry-run", "--tokenizer", str(tokenizer.path),
                "--model.emb_dim", "16", "--model.enc_hidden", "16", "--model.dec_hidden", "32"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 3 and "nlp-dry-run-" in result["out"]


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('task = "lm"\ncorpus = ["wikitext2"]\nlr = 0.01\n[model]\nhidden_size = 64\nemb_dim = 64\n')
    cfg = resolve_config(["--config", str(toml), "--lr", "0.5", "--model.hidden_size", "32",
                          "--model.tie_weights", "false", "--corpus", "a.txt,b.txt", "--no-amp"])
    assert cfg.lr == 0.5 and cfg.model == {"hidden_size": 32, "emb_dim": 64, "tie_weights": False}
    assert cfg.corpus == ["a.txt", "b.txt"] and cfg.amp is False and cfg.out == "runs/lm"
    with pytest.raises(SystemExit):
        resolve_config(["--model.hiden_size", "3"])
    toml.write_text("lrr = 1\n")
    with pytest.raises(SystemExit):
        resolve_config(["--config", str(toml)])


def test_each_task_has_a_config_of_its_own_settings_and_another_tasks_setting_is_refused(tmp_path, capsys, trained):
    import dataclasses

    from nlp.config import TASK_CONFIGS, TrainConfig, own_fields
    from nlp.tasks import TASKS

    assert set(TASK_CONFIGS) == set(TASKS)
    owned = [f.name for cls in TASK_CONFIGS.values() for f in own_fields(cls)]
    assert len(owned) == len(set(owned)) and not set(owned) & {f.name for f in dataclasses.fields(TrainConfig)}
    chat = dataclasses.asdict(resolve_config(["--task", "chat", "--context-turns", "2"]))
    assert chat["context_turns"] == 2 and "rating_weight" not in chat and "bptt" not in chat
    with pytest.raises(SystemExit) as e:
        resolve_config(["--task", "chat", "--rating-weight", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rating-weight is a setting of task sentiment, not of chat" in err
    toml = tmp_path / "c.toml"
    toml.write_text('task = "lm"\nmax_src_len = 64\n')
    with pytest.raises(SystemExit):
        resolve_config(["--config", str(toml)])
    assert "max_src_len is a setting of task chat, not of lm" in capsys.readouterr().err
    # what a run writes: its task's settings only
    for task, folder in trained.items():
        written = set(json.loads((folder / "config.json").read_text())["train"])
        assert written == {f.name for f in dataclasses.fields(TASK_CONFIGS[task])} - {"model"}, task


def test_wrong_corpus_for_the_task_is_a_clear_error(tokenizer):
    from nlp.corpora import CorpusError

    with pytest.raises(CorpusError, match="cannot train on corpora of task"):
        Trainer(resolve_config(["--task", "chat", "--corpus", str(LM_TEXT), "--tokenizer", str(tokenizer.path)]))


def test_an_empty_validation_split_is_an_error_not_a_perfect_score(tmp_path, tokenizer):
    from nlp.corpora import CorpusError

    two = tmp_path / "two.jsonl"  # two rows: both go to train, none to validation
    two.write_text('{"text": "good film", "label": 1}\n{"text": "bad film", "label": 0}\n')
    with pytest.raises(CorpusError, match="no validation examples"):
        Trainer(resolve_config(["--task", "sentiment", "--corpus", str(two), "--tokenizer", str(tokenizer.path),
                                "--out", str(tmp_path / "out")]))


def test_lm_gru_with_adaptive_softmax_trains(tmp_path, tokenizer):
    out = tmp_path / "g"
    r = train_tiny("lm", out, tokenizer.path, "--max-steps", "5", "--model.rnn_type", "gru",
                   "--model.tie_weights", "false", "--model.adaptive_cutoffs", "100,300", "--optimizer", "sgd",
                   "--lr", "1", "--schedule", "plateau")
    assert r["step"] == 5
    assert load_checkpoint(out).model.config.adaptive_cutoffs == [100, 300]


def _bf16_lstm_runs() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(4, 4, batch_first=True)(torch.randn(1, 2, 4))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("task,extra", [
    ("lm", ()),
    ("lm", ("--model.tie_weights", "false", "--model.adaptive_cutoffs", "100,300")),
    ("chat", ()),
    ("sentiment", ()),
])
def test_bfloat16_autocast_on_cpu_trains_every_task(tmp_path, tokenizer, monkeypatch, task, extra):
    """What `amp` does on a CPU with native bf16, forced here so that it runs on other CPUs too where oneDNN can
    emulate it. (On an AVX2-only CPU oneDNN has no bf16 LSTM at all, and `amp` rightly stays float32 there.)"""
    import nlp.runtime

    if not _bf16_lstm_runs():
        pytest.skip("this CPU's oneDNN has no bfloat16 LSTM (no AVX512-BF16/AMX, no emulation)")
    monkeypatch.setattr(nlp.runtime, "cpu_has_native_bf16", lambda: True)
    argv = ["--task", task, "--corpus", str(CORPUS[task]), "--tokenizer", str(tokenizer.path),
            "--out", str(tmp_path / "r"), "--device", "cpu", "--max-steps", "3", "--log-every", "1",
            *TINY[task], *extra]
    trainer = Trainer(resolve_config(argv))
    assert trainer.amp_dtype == torch.bfloat16
    assert trainer.fit()["step"] == 3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay float32
    losses = [r["train_loss"] for r in log_of(tmp_path / "r") if "train_loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert Trainer(resolve_config([*argv, "--no-amp"])).amp_dtype is None


def test_torchrun_data_parallel_on_two_processes(tmp_path, tokenizer):
    """DDP under torchrun (gloo on the CPU): two processes train one model and rank 0 writes it."""
    import os
    import shutil
    import subprocess

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "nlp", "train", "--task", "sentiment",
         "--corpus", str(SENTIMENT), "--tokenizer", str(tokenizer.path), "--out", str(out), "--max-steps", "4",
         "--model.emb_dim", "16", "--model.hidden_size", "16", "--model.num_layers", "1", "--model.attn_dim", "8"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["step"] == 4
    start = next(r for r in log_of(out) if r.get("event") == "start")
    assert start["world_size"] == 2
    assert load_checkpoint(out).task == "sentiment"


@pytest.mark.parametrize("sig,reason", [("SIGTERM", "stopped by SIGTERM"), ("SIGINT", "interrupted (Ctrl-C)")])
def test_a_signal_stops_a_run_after_saving_its_state(tmp_path, tokenizer, sig, reason):
    """What a scheduler or `kill` sends, or Ctrl-C: the step in hand finishes, the state is saved, exit 0."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "t"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlp", "train", "--task", "lm", "--corpus", str(LM_TEXT), "--tokenizer",
         str(tokenizer.path), "--out", str(out), "--epochs", "100000", "--log-every", "1", *TINY["lm"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        log = out / "train_log.jsonl"
        while not (log.exists() and '"train_loss"' in log.read_text()):  # text: a line may be half written
            assert proc.poll() is None and time.time() < deadline, "the run never started training"
            time.sleep(0.2)
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    stop = log_of(out)[-1]
    assert stop["event"] == "stop" and stop["reason"] == reason
    assert (out / "resume").is_dir() and load_checkpoint(out).task == "lm"
    again = train_tiny("lm", out, tokenizer.path, "--resume", "--max-steps", str(stop["step"] + 1))
    assert again["step"] == stop["step"] + 1  # it carries on from where it stopped


def test_a_hard_kill_resumes_from_the_last_periodic_save(tmp_path, tokenizer, monkeypatch):
    """Simulate SIGKILL two steps after a periodic save: no stop handler runs; --resume picks it up, and the
    log lines of the lost steps give way to the resumed run's (the Models page draws one curve forward)."""
    from nlp import train as T

    out = tmp_path / "k"
    calls = {"n": 0}
    real = T.Trainer.train_step

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise SystemExit("killed")
        return real(self, batch)

    monkeypatch.setattr(T.Trainer, "train_step", dying)
    with pytest.raises(SystemExit):
        train_tiny("lm", out, tokenizer.path, "--save-every", "3", "--epochs", "1", "--log-every", "1")
    assert json.loads((out / "resume" / "state.json").read_text())["step"] == 3
    monkeypatch.setattr(T.Trainer, "train_step", real)
    again = train_tiny("lm", out, tokenizer.path, "--max-steps", "8", "--epochs", "1", "--resume", "--log-every", "1")
    assert again["step"] == 8
    raw = [r for r in log_of(out) if "train_loss" in r]
    assert [r["step"] for r in raw] == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]  # steps 4 and 5 ran twice
    kept = [r for r in read_train_log(out) if "train_loss" in r]
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert kept[3] == raw[5]  # step 4 as the resumed run logged it


def test_init_from_copies_matching_weights_from_a_language_model(tmp_path, tokenizer, trained):
    """ULMFiT-style start: the classifier takes the LM's embedding (and forward LSTM layer where sizes fit)."""
    from nlp.models import SentimentClassifier, SentimentConfig

    lm = load_checkpoint(trained["lm"]).model
    out = tmp_path / "s"
    cfg = resolve_config(["--task", "sentiment", "--corpus", str(SENTIMENT), "--out", str(out), "--tokenizer",
                          str(tokenizer.path), "--init-from", str(trained["lm"]), "--model.emb_dim", "32",
                          "--model.hidden_size", "32", "--model.num_layers", "1", "--model.attn_dim", "8"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, SentimentClassifier) and isinstance(trainer.model.config, SentimentConfig)
    torch.testing.assert_close(trainer.model.embed.weight, lm.embed.weight)
    torch.testing.assert_close(trainer.model.encoder.weight_hh_l0, lm.rnn.weight_hh_l0)
    taken = next(r for r in log_of(out) if r.get("event") == "init_from")["tensors"]
    assert "embed.weight" in taken and "encoder.weight_ih_l0" in taken
    assert not any("reverse" in k for k in taken)


def test_init_lr_scale_moves_the_copied_weights_slower(tmp_path, tokenizer, trained):
    """ULMFiT's discriminative fine-tuning: the weights init_from copied get lr * init_lr_scale; at 0 they stay
    exactly as the LM left them while the new ones train. A negative scale is refused."""
    lm = load_checkpoint(trained["lm"]).model
    argv = ["--task", "sentiment", "--corpus", str(SENTIMENT), "--tokenizer", str(tokenizer.path), "--no-amp",
            "--init-from", str(trained["lm"]), "--model.emb_dim", "32", "--model.hidden_size", "32",
            "--model.num_layers", "1", "--model.attn_dim", "8", "--max-steps", "3", "--warmup-steps", "0"]
    scaled = Trainer(resolve_config([*argv, "--out", str(tmp_path / "a"), "--init-lr-scale", "0.25"]))
    new, old = scaled.opt.param_groups
    assert old["initial_lr"] == pytest.approx(0.25 * new["initial_lr"])
    copied = {id(p) for n, p in scaled.model.named_parameters() if n in scaled.pretrained}
    assert {id(p) for p in old["params"]} == copied and not copied & {id(p) for p in new["params"]}

    frozen = Trainer(resolve_config([*argv, "--out", str(tmp_path / "b"), "--init-lr-scale", "0"]))
    before = {n: p.detach().clone() for n, p in frozen.model.named_parameters()}
    frozen.fit()
    after = dict(frozen.model.named_parameters())
    torch.testing.assert_close(after["embed.weight"], lm.embed.weight, rtol=0, atol=0)
    torch.testing.assert_close(after["encoder.weight_hh_l0"], lm.rnn.weight_hh_l0, rtol=0, atol=0)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in frozen.pretrained)  # they train

    with pytest.raises(ConfigError, match="init-lr-scale must be a number from 0"):  # 0 freezes the copied weights
        resolve_config([*argv, "--out", str(tmp_path / "c"), "--init-lr-scale", "-1"])


def test_a_second_ctrl_c_quits_at_once():
    import signal

    from nlp.runtime import StopRequests

    requests = StopRequests(announce=False)
    requests._on(signal.SIGINT, None)  # the first asks the loop to stop after the step in hand
    assert requests.reason == "interrupted (Ctrl-C)"
    with pytest.raises(KeyboardInterrupt):
        requests._on(signal.SIGINT, None)


def nan_on_steps(monkeypatch, trainer, steps: set[int]):
    """Make the task's training loss NaN on the given (1-based) steps."""
    real = trainer.task.loss

    def loss(net, batch, carry, train):
        out = real(net, batch, carry, train)
        if train and trainer.p.step + 1 in steps:
            return (out[0] * float("nan"), *out[1:])
        return out
    monkeypatch.setattr(trainer.task, "loss", loss)


def lm_trainer(tmp_path, tokenizer, *extra):
    argv = ["--task", "lm", "--corpus", str(LM_TEXT), "--out", str(tmp_path / "r"), "--tokenizer",
            str(tokenizer.path), "--log-every", "1", "--no-amp", *TINY["lm"], *extra]
    return Trainer(resolve_config(argv))


def test_a_step_with_a_nonfinite_loss_is_skipped_and_counted(tmp_path, tokenizer, monkeypatch):
    trainer = lm_trainer(tmp_path, tokenizer, "--max-steps", "8", "--save-every", "0")
    nan_on_steps(monkeypatch, trainer, {3, 4})
    weights = {}
    real_step = trainer.train_step

    def step(batch):
        weights[trainer.p.step] = [q.detach().clone() for q in trainer.model.parameters()]
        return real_step(batch)
    monkeypatch.setattr(trainer, "train_step", step)
    assert trainer.fit()["step"] == 8
    # steps 3 and 4 left the weights as they were (step 5 starts from what step 2 made)
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[4]))
    assert not all(torch.equal(a, b) for a, b in zip(weights[1], weights[2]))
    records = log_of(tmp_path / "r")
    assert [r["step"] for r in records if r.get("event") == "nonfinite"] == [3, 4]
    assert next(r for r in records if r.get("step") == 8 and "train_loss" in r)["nonfinite_steps"] == 2
    assert all(math.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
    assert all(torch.isfinite(q).all() for q in load_checkpoint(tmp_path / "r").model.parameters())


def test_nonfinite_losses_in_a_row_stop_the_run_with_a_clear_error(tmp_path, tokenizer, monkeypatch):
    from nlp.errors import TrainingError

    trainer = lm_trainer(tmp_path, tokenizer, "--max-steps", "50", "--save-every", "3", "--max-nonfinite", "4")
    nan_on_steps(monkeypatch, trainer, set(range(5, 100)))
    with pytest.raises(TrainingError, match=r"not finite for 4 steps in a row \(to step 8\).*--lr"):
        trainer.fit()
    assert log_of(tmp_path / "r")[-1]["event"] == "stop"
    state = json.loads((tmp_path / "r" / "resume" / "state.json").read_text())
    assert state["step"] == 8 and state["nonfinite_run"] == 4  # the weights stayed finite, so they were saved
    assert load_checkpoint(tmp_path / "r").task == "lm"


def test_nonfinite_weights_are_never_saved(tmp_path, tokenizer, monkeypatch):
    """Weights that overflowed (poisoned here after step 4) are neither written as resume state nor as the
    checkpoint: the step-3 state stays, and the run ends with an error that says so."""
    from safetensors.torch import load_file

    from nlp.errors import TrainingError

    trainer = lm_trainer(tmp_path, tokenizer, "--max-steps", "20", "--save-every", "3", "--eval-every", "2")
    real_step = trainer.train_step

    def step(batch):
        out = real_step(batch)
        if trainer.p.step + 1 == 4:
            with torch.no_grad():
                trainer.model.embed.weight[5, 0] = float("inf")
        return out
    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(TrainingError, match="NaN or infinity.*not saved"):
        trainer.fit()
    state = load_file(str(tmp_path / "r" / "resume" / "state.safetensors"))
    assert json.loads((tmp_path / "r" / "resume" / "state.json").read_text())["step"] == 3
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert all(torch.isfinite(q).all() for q in load_checkpoint(tmp_path / "r").model.parameters())


def test_a_resumed_run_keeps_its_learning_rate_schedule(tmp_path, tokenizer, capsys):
    """The cosine schedule's length is fixed when the run starts (so a resumed run's learning rate at each step is
    that of a run that never stopped); resuming with settings that would change it says so and keeps it."""
    out = tmp_path / "h"
    args = ["--warmup-steps", "2", "--log-every", "1"]
    train_tiny("lm", out, tokenizer.path, "--max-steps", "6", *args)
    train_tiny("lm", out, tokenizer.path, "--max-steps", "8", "--resume", *args)
    assert "keeps the length this run started with (6 steps; these settings would give 8)" in capsys.readouterr().err
    assert [r["schedule_steps"] for r in log_of(out) if r.get("event") == "start"] == [6, 6]
    lrs = {r["step"]: r["lr"] for r in log_of(out) if "lr" in r}
    assert lrs[3] > lrs[5] > 0 and lrs[7] == lrs[8] == 0.0  # past its end the cosine stays at 0


def test_the_cosine_schedule_warms_up_linearly_then_decays_to_zero_at_its_horizon():
    from nlp.optim import build_optimizer, build_schedule

    cfg = resolve_config(["--task", "lm", "--lr", "1.0", "--warmup-steps", "4", "--schedule", "cosine"])
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_schedule(opt, cfg, horizon=14)
    rates = []
    for _ in range(14):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0) and rates[9] == pytest.approx(0.5, abs=0.03)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:])) and opt.param_groups[0]["lr"] == pytest.approx(0.0)
    two = build_optimizer(model, resolve_config(["--task", "lm", "--lr", "1.0", "--init-lr-scale", "0.1"]),
                          pretrained={"weight"})
    assert [g["lr"] for g in two.param_groups] == [1.0, pytest.approx(0.1)]
