import hashlib
import json
import pickle

import pytest
import torch

from nlp import checkpoint as ckpt
from nlp import train_state
from nlp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nlp.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig


def small_lm(tokenizer, **kw):
    torch.manual_seed(0)
    return LanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, emb_dim=16, hidden_size=16, **kw)).eval()


@pytest.fixture
def no_pickle(monkeypatch):
    """Any attempt to unpickle during the test fails it."""
    def refuse(*a, **k):
        raise AssertionError("pickle was used")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_round_trip_gives_the_same_outputs_without_pickle(tmp_path, tokenizer, no_pickle):
    m = small_lm(tokenizer)
    save_checkpoint(tmp_path / "c", m, tokenizer, {"train": {"lr": 1}})
    ck = load_checkpoint(tmp_path / "c")
    ids = torch.randint(5, tokenizer.vocab_size, (2, 7))
    torch.testing.assert_close(ck.model(ids)[0], m(ids)[0])
    assert ck.task == "lm" and ck.config["train"] == {"lr": 1}
    assert ck.model.out.weight is ck.model.embed.weight  # tying survives the round trip
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.model"]


def test_a_language_model_saved_under_its_former_names_still_loads(tmp_path, tokenizer):
    """Checkpoints from before the output layer was named `out` (as in Seq2Seq) call it `decoder`."""
    from safetensors.torch import load_file, save_file

    m = small_lm(tokenizer)
    save_checkpoint(tmp_path / "c", m, tokenizer, {})
    weights = tmp_path / "c" / "model.safetensors"
    old = {k.replace("out.", "decoder.", 1): v for k, v in load_file(weights).items()}
    assert "decoder.bias" in old
    save_file(old, weights)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["files"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    ck = load_checkpoint(tmp_path / "c")
    torch.testing.assert_close(ck.model.out.bias, m.out.bias)
    ids = torch.randint(5, tokenizer.vocab_size, (2, 7))
    torch.testing.assert_close(ck.model.log_probs(ck.model(ids)[0]), m.log_probs(m(ids)[0]))


def test_a_checkpoint_whose_config_holds_every_tasks_settings_still_serves(tmp_path, trained):
    """config.json written before the per-task training configs held every task's settings."""
    import shutil

    from nlp.decoding import GenerationConfig, make_generator
    from nlp.serve import chat_reply, open_checkpoint

    copy = shutil.copytree(trained["chat"], tmp_path / "chat")
    config = json.loads((copy / "config.json").read_text())
    config["train"].update({"bptt": 70, "max_len": 128, "rating_weight": 0.5, "distill_from": ""})
    (copy / "config.json").write_text(json.dumps(config))
    ck = open_checkpoint(copy, task="chat")
    reply = chat_reply(ck, ["hello"], GenerationConfig(max_new_tokens=5), make_generator(0))
    assert isinstance("".join(reply.stream), str)


def test_half_precision_halves_the_file_and_loads_as_float32(tmp_path, tokenizer):
    m = Seq2Seq(Seq2SeqConfig(vocab_size=tokenizer.vocab_size, emb_dim=16, enc_hidden=16, dec_hidden=32)).eval()
    save_checkpoint(tmp_path / "full", m, tokenizer)
    save_checkpoint(tmp_path / "half", m, tokenizer, half=True)
    full, half = (tmp_path / "full" / ckpt.WEIGHTS).stat().st_size, (tmp_path / "half" / ckpt.WEIGHTS).stat().st_size
    assert half < 0.55 * full
    ck = load_checkpoint(tmp_path / "half")
    assert next(ck.model.parameters()).dtype == torch.float32
    src, tgt = torch.randint(5, 100, (1, 5)), torch.randint(5, 100, (1, 4))
    torch.testing.assert_close(ck.model(src, torch.tensor([5]), tgt)[0], m(src, torch.tensor([5]), tgt)[0],
                               atol=2e-2, rtol=0)


def test_missing_checkpoint_says_how_to_rebuild(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*python -m nlp train"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_config", "wrong_format", "tampered_tokenizer",
                                    "missing_weights", "shape_mismatch", "nan_weights"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, tokenizer, damage):
    path = tmp_path / "c"
    save_checkpoint(path, small_lm(tokenizer), tokenizer)
    cfg = json.loads((path / ckpt.CONFIG).read_text())
    if damage == "truncate_weights":
        data = (path / ckpt.WEIGHTS).read_bytes()
        (path / ckpt.WEIGHTS).write_bytes(data[: len(data) // 2])
    elif damage == "garbage_config":
        (path / ckpt.CONFIG).write_text("{not json")
    elif damage == "wrong_format":
        (path / ckpt.CONFIG).write_text(json.dumps({"format": 99}))
    elif damage == "tampered_tokenizer":
        (path / ckpt.TOKENIZER).write_bytes(b"x" * 100)
    elif damage == "missing_weights":
        (path / ckpt.WEIGHTS).unlink()
    elif damage == "shape_mismatch":  # the config promises a bigger model than the weights hold
        cfg["model"]["hidden_size"] = cfg["model"]["emb_dim"] = 32
        del cfg["files"]
        (path / ckpt.CONFIG).write_text(json.dumps(cfg))
    elif damage == "nan_weights":  # what a diverged run could write (save_checkpoint refuses); no checksum can tell
        from safetensors.torch import save_file

        weights = ckpt.unique_state(small_lm(tokenizer))
        weights["embed.weight"][3, 0] = float("nan")
        save_file(weights, str(path / ckpt.WEIGHTS))
        cfg["files"][ckpt.WEIGHTS] = ckpt._file_sha256(path / ckpt.WEIGHTS)
        (path / ckpt.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("half", [False, True])
def test_nonfinite_weights_are_not_saved_and_the_old_checkpoint_stays(tmp_path, tokenizer, half):
    path = tmp_path / "c"
    save_checkpoint(path, small_lm(tokenizer), tokenizer)
    before = (path / ckpt.WEIGHTS).read_bytes()
    model = small_lm(tokenizer)
    with torch.no_grad():
        model.embed.weight[3, 0] = 1e6 if half else float("inf")  # 1e6 is past float16's largest, 65504
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        save_checkpoint(path, model, tokenizer, half=half)
    assert (path / ckpt.WEIGHTS).read_bytes() == before
    load_checkpoint(path)


def test_unhashed_but_corrupt_weights_are_still_caught(tmp_path, tokenizer):
    path = tmp_path / "c"
    save_checkpoint(path, small_lm(tokenizer), tokenizer)
    cfg = json.loads((path / ckpt.CONFIG).read_text())
    del cfg["files"]
    (path / ckpt.CONFIG).write_text(json.dumps(cfg))
    (path / ckpt.WEIGHTS).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_no_temporary_files_are_left_behind(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "c", small_lm(tokenizer), tokenizer)
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name]


def test_training_state_round_trip(tmp_path, tokenizer, no_pickle):
    m = small_lm(tokenizer).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    ids = torch.randint(5, 100, (2, 6))
    for _ in range(2):
        loss = m.loss(ids[:, :-1], ids[:, 1:])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    train_state.save(tmp_path / "r", m, opt, sched, counters={"step": 2})
    m2 = small_lm(tokenizer).train()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5 ** s)
    info, tensors = train_state.read(tmp_path / "r")
    train_state.restore(tmp_path / "r", info, tensors, m2, opt2, sched2)
    assert info["step"] == 2
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for a, b in zip(m.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg"], sb[k]["exp_avg"])


def test_loading_skips_the_random_initialisation_and_puts_it_back(tmp_path, tokenizer, monkeypatch):
    from nlp.cpu_serving import weights_not_drawn

    drawn = []
    real = torch.nn.init.orthogonal_
    monkeypatch.setattr(torch.nn.init, "orthogonal_", lambda t, *a, **k: drawn.append(t.shape) or real(t, *a, **k))
    save_checkpoint(tmp_path / "c", small_lm(tokenizer), tokenizer)
    drawn.clear()
    load_checkpoint(tmp_path / "c")
    assert drawn == []  # every weight comes from the file: none is drawn first
    with pytest.raises(RuntimeError), weights_not_drawn():
        t = torch.zeros(4)
        assert torch.nn.init.uniform_(t) is t and not t.any()
        raise RuntimeError("a build that fails")
    assert torch.nn.init.uniform_(t).any()
    small_lm(tokenizer)
    assert drawn  # drawn again after the load


def test_a_load_for_init_from_advances_the_random_stream_as_a_build_does(tmp_path, tokenizer):
    """Training's --init-from loads with draw_weights=True: a seeded run's dropout stream stays the one the
    shipped recipes were trained with, so they retrain exactly."""
    m = small_lm(tokenizer)
    save_checkpoint(tmp_path / "c", m, tokenizer)
    torch.manual_seed(3)
    LanguageModel(m.config)
    after_build = torch.rand(3)
    torch.manual_seed(3)
    load_checkpoint(tmp_path / "c", draw_weights=True)
    torch.testing.assert_close(torch.rand(3), after_build)
