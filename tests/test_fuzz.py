"""Property-based fuzz (hypothesis) of what users hand the program: CLI arguments, files, texts, chat
histories and decoding settings. Every case must end in a result or in the project's own error (exit 2 at the
CLI), never in another exception, a traceback or a hang. Derandomized, so a CI failure reproduces exactly; a
failure found here becomes a regular test elsewhere. FUZZ_SCALE=N multiplies the example counts (CI: 1).

The example counts below add up to more than 10,000 cases per run (see test_the_fuzz_runs_enough_cases).
"""

import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nlp.__main__ import build_parser, main
from nlp.augment import augment, negate
from nlp.decoding import GenerationConfig, choose, filter_scores, make_generator
from nlp.errors import CheckpointError, ConfigError, CorpusError, GenerationError, TokenizerError
from tests.conftest import adjust

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
USER_ERRORS = (CorpusError, CheckpointError, TokenizerError, GenerationError, ConfigError)
COUNTS = {"text": 2000, "config": 2500, "scores": 1500, "argv": 2000, "augment": 1500, "classify": 400,
          "chat": 150, "generate": 150, "files": 150, "cli": 120}


def fuzz(kind: str):
    # no shrinking phase: a failure is reported as found (derandomized, so it reproduces), and CI never spends
    # minutes shrinking it
    return settings(max_examples=max(1, int(COUNTS[kind] * SCALE)), deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def test_the_fuzz_runs_enough_cases():
    assert sum(COUNTS.values()) >= 10_000


# texts: every code point, control characters, NULs, long runs, markup
ANY_TEXT = st.one_of(st.text(max_size=300), st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
                     st.sampled_from(["", " ", "\x00", "\n\n", "<script>alert(1)</script>", "x" * 30_000,
                                      "\ufffd", "@-@ <unk>", "🙂" * 40, "\u202e\u200b"]))


@fuzz("text")
@given(ANY_TEXT)
def test_text_checks_and_tokenizer_round_trip(tokenizer, text):
    from nlp.serve import check_text, strip_control

    clean, removed = strip_control(text)
    assert removed == len(text) - len(clean) and "\x00" not in clean
    try:
        assert check_text(text, "prompt", limit=20_000) == text
    except GenerationError as e:
        assert "NUL" in str(e) or "limit" in str(e)
    assert tokenizer.decode(tokenizer.encode(clean)) == clean.replace("\u2581", " ")  # SentencePiece's space
    assert "\ufffd" not in tokenizer.decode(tokenizer.encode(clean)[:7]) or "\ufffd" in clean


NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.none())


@fuzz("config")
@given(st.fixed_dictionaries({}, optional={
    "strategy": st.one_of(st.sampled_from(["greedy", "sample", "beam"]), st.text(max_size=5)),
    "temperature": NUMBER, "top_k": st.integers(-5, 10**6), "top_p": NUMBER, "min_p": NUMBER,
    "repetition_penalty": NUMBER, "no_repeat_ngram_size": st.integers(-3, 9), "max_new_tokens": st.integers(-3, 500),
    "min_new_tokens": st.integers(-3, 500), "num_beams": st.integers(-2, 20), "num_candidates": st.integers(-2, 99),
    "num_return_sequences": st.integers(-2, 20)}))
def test_decoding_settings_are_accepted_or_refused_with_a_message(values):
    try:
        cfg = GenerationConfig.from_dict(values)
    except GenerationError:
        return
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        value = getattr(cfg, name)
        assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
    assert cfg.max_new_tokens >= 1 and 0 <= cfg.min_new_tokens <= cfg.max_new_tokens


@fuzz("scores")
@given(st.integers(1, 6), st.integers(5, 40), st.data())
def test_score_processing_keeps_a_token_to_choose(rows, vocab, data):
    scores = torch.log_softmax(torch.tensor(data.draw(st.lists(
        st.lists(st.floats(-30, 30), min_size=vocab, max_size=vocab), min_size=rows, max_size=rows))), -1)
    histories = data.draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=15), min_size=rows, max_size=rows))
    cfg = GenerationConfig(temperature=data.draw(st.floats(0.05, 5)), top_k=data.draw(st.integers(0, vocab)),
                           top_p=data.draw(st.floats(0.01, 1)), min_p=data.draw(st.floats(0, 0.99)),
                           repetition_penalty=data.draw(st.floats(0.5, 3)),
                           no_repeat_ngram_size=data.draw(st.integers(0, 4)), min_new_tokens=0)
    adjusted = adjust(scores, histories, cfg, generated=3)
    kept = filter_scores(adjusted, cfg)
    finite = torch.isfinite(adjusted).any(-1)
    assert (torch.isfinite(kept).any(-1) == finite).all()  # filtering never empties a row that had a choice
    if finite.all():
        picked = torch.tensor(choose(adjusted, cfg, make_generator(0)))
        assert torch.isfinite(adjusted.gather(1, picked[:, None])).all()


ARG = st.one_of(st.sampled_from(["--checkpoint", "--corpus", "--split", "--max-examples", "--temperature", "--seed",
                                 "--top-k", "--json", "--file", "--num-samples", "-1", "0", "nan", "inf", "x", "",
                                 "test", "validation", "/", "/dev/null", "--", "-h"]), st.text(max_size=8))
COMMANDS = ["corpora", "tokenizer", "eval", "tune-chat", "tune-sentiment", "probe-sentiment", "generate", "chat",
            "sentiment"]


@fuzz("argv")
@given(st.sampled_from(COMMANDS), st.lists(ARG, max_size=6))
def test_argument_parsing_accepts_or_exits_2(capsys, command, rest):
    try:
        build_parser().parse_args([command, *rest])
    except SystemExit as stop:
        assert stop.code in (0, 2)  # --help, or a usage error in one line
    capsys.readouterr()


@fuzz("augment")
@given(st.lists(st.fixed_dictionaries({"text": ANY_TEXT, "label": st.sampled_from([-1, 0, 1]),
                                       "rating": st.floats(-4, 4), "domain": st.sampled_from(["a", "b"])}),
                max_size=12), st.floats(0, 2))
def test_augmentation_never_fails_and_keeps_labels_binary(rows, fraction):
    for r in rows:
        negate(r["text"])
    extra = augment(rows, fraction, seed=1)
    assert len(extra) <= round(fraction * len(rows)) + 1
    assert all(e["label"] in (0, 1) and -4 <= e["rating"] <= 4 for e in extra)


@fuzz("classify")
@given(st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_classify_any_text(trained_models, texts):
    from nlp.serve import classify, strip_control
    from nlp.verdict import VERDICTS

    results = classify(trained_models["sentiment"], [strip_control(t)[0][:5000] for t in texts])
    assert len(results) == len(texts)
    assert all(0.5 <= r["probability"] <= 1 and r["verdict"] in VERDICTS and math.isfinite(r.get("rating", 0.0))
               for r in results)


@fuzz("chat")
@given(st.lists(ANY_TEXT.map(lambda t: t[:1000]), min_size=1, max_size=6), st.integers(1, 4),
       st.sampled_from(["greedy", "sample", "beam"]))
def test_chat_reply_to_any_history(trained_models, history, candidates, strategy):
    from nlp.serve import chat_reply

    cfg = GenerationConfig(strategy=strategy, max_new_tokens=6, num_candidates=candidates, num_beams=2)
    try:
        reply = chat_reply(trained_models["chat"], history, cfg, make_generator(0))
        text = "".join(reply.stream)
    except GenerationError as e:
        assert str(e)
        return
    assert text == reply.text and "\ufffd" not in text


@fuzz("generate")
@given(ANY_TEXT.map(lambda t: t[:2000]), st.floats(0, 3), st.integers(1, 12))
def test_continue_any_prompt(trained_models, prompt, temperature, tokens):
    from nlp.serve import continue_text

    cfg = GenerationConfig(temperature=temperature, max_new_tokens=tokens)
    gen = continue_text(trained_models["lm"], prompt, cfg, make_generator(0))
    assert "".join(gen.stream) == gen.text and gen.tokens <= tokens


@fuzz("files")
@given(st.sampled_from([".csv", ".tsv", ".jsonl", ".txt", ".json"]),
       st.one_of(st.binary(max_size=300), ANY_TEXT.map(str.encode),
                 st.lists(st.fixed_dictionaries({}, optional={"text": ANY_TEXT, "label": st.one_of(
                     st.integers(-3, 3), st.text(max_size=4), st.none()), "rating": st.one_of(
                     st.floats(), st.text(max_size=4), st.none()), "context": ANY_TEXT, "response": ANY_TEXT}),
                     max_size=8).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())))
def test_any_file_reads_as_a_corpus_or_says_why(tmp_path_factory, suffix, body):
    from nlp.corpora import load_corpus

    path = tmp_path_factory.mktemp("f") / f"data{suffix}"
    path.write_bytes(body)
    try:
        dd = load_corpus(str(path))
    except CorpusError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    assert set(dd) == {"train", "validation", "test"}


@fuzz("cli")
@given(st.sampled_from(["sentiment", "generate", "chat", "eval"]), st.lists(ARG, max_size=4), st.data())
def test_cli_commands_end_in_a_result_or_one_line(trained_models, capsys, monkeypatch, command, rest, data):
    import io
    import sys

    task = {"sentiment": "sentiment", "generate": "lm", "chat": "chat", "eval": "sentiment"}[command]
    argv = [command, "--checkpoint", str(trained_models[task].path), *rest]
    if command == "generate":
        argv += ["--max-new-tokens", "4"]
    if command == "eval":
        argv += ["--corpus", "tests/fixtures/vader_amazon.tsv", "--max-examples", "8"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(data.draw(ANY_TEXT.map(lambda t: t[:300]))))
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2 and err.startswith("error:"):
        assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def trained_models(trained):
    from nlp.checkpoint import load_checkpoint

    return {task: load_checkpoint(path) for task, path in trained.items()}


EDGES = ["0", "-1", "-5", "1e12", "99999999999", "nan", "inf", "-inf", "0.5", "1", "x"]


def numeric_train_settings() -> list[tuple[str, str]]:
    """(task, setting) for every numeric setting of every task's training config."""
    import dataclasses
    import typing

    from nlp.config import TASK_CONFIGS
    out, seen = [], set()  # a setting every task has is tried once, with the first task
    for task, cls in TASK_CONFIGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float) and f.name not in seen:
                seen.add(f.name)
                out.append((task, f.name))
    return out


@pytest.mark.parametrize("task,name", numeric_train_settings())
def test_every_numeric_training_setting_at_its_edges_is_checked_or_refused_in_one_line(capsys, task, name):
    from nlp.config import LIMITS, check_train_config, resolve_config

    assert name in LIMITS, f"{name} has no range in nlp.config.LIMITS"
    for value in EDGES:
        try:
            cfg = resolve_config(["--task", task, f"--{name.replace('_', '-')}", value])
        except ConfigError as e:
            assert name.replace("_", "-") in str(e) and "\n" not in str(e)
            continue
        except (SystemExit, ValueError) as e:  # a value that is not a number of the setting's kind: usage error
            assert getattr(e, "code", 2) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) <= 1, err
            continue
        check_train_config(cfg)  # accepted: within its range
        got = getattr(cfg, name)
        assert math.isfinite(got) and got >= 0, (name, value, got)


MODEL_EDGES = [0, -5, 10**9, float("nan"), float("inf"), -0.5, 1.0, True, "x", None]


@pytest.mark.parametrize("task", ["lm", "chat", "sentiment"])
def test_every_model_setting_at_its_edges_is_refused_by_name(task):
    import dataclasses

    from nlp.models import build_model
    from nlp.tasks import TASKS
    config = TASKS[task].model_class.Config
    small = {"vocab_size": 50, "emb_dim": 8, "hidden_size": 8, "enc_hidden": 8, "dec_hidden": 8, "attn_dim": 8}
    base = {k: v for k, v in small.items() if k in {f.name for f in dataclasses.fields(config)}}
    build_model(task, dict(base), draw_weights=False)
    for f in dataclasses.fields(config):
        if f.type not in ("int", "float", int, float):
            continue
        for value in MODEL_EDGES:
            ok = (f.type in ("int", int) and isinstance(value, int) and not isinstance(value, bool)
                  and 0 <= value <= 16 and (value > 0 or f.name == "rank_dim")) or \
                (f.type in ("float", float) and isinstance(value, (int, float)) and not isinstance(value, bool)
                 and 0 <= value < 1)
            if ok:
                continue
            with pytest.raises(ConfigError, match=f"model.{f.name}"):
                build_model(task, {**base, f.name: value}, draw_weights=False)


def test_a_checkpoint_with_a_negative_size_and_a_zero_batch_size_are_one_line_errors(trained, tmp_path, capsys):
    import json
    import shutil

    from nlp.__main__ import main
    own = tmp_path / "sentiment"
    shutil.copytree(trained["sentiment"], own)
    config = json.loads((own / "config.json").read_text())
    config["model"]["hidden_size"] = -5
    (own / "config.json").write_text(json.dumps(config))
    assert main(["sentiment", "--checkpoint", str(own), "fine"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.hidden_size" in err, err
    assert main(["train", "--task", "sentiment", "--corpus", "vader-movies", "--batch-size", "0", "--max-steps", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "batch-size" in err, err
