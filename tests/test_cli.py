import argparse
import json
import shutil
import subprocess
import sys

import pytest

from nlp.__main__ import main
from tests.conftest import CHAT, SENTIMENT


def test_corpora_list_and_show(capsys):
    assert main(["corpora", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("wikitext2", "chitchat", "cornell", "vader-movies", "vader-tweets", "vader-amazon", "vader-nyt"):
        assert name in out
    assert main(["corpora", "show", str(SENTIMENT), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sum(s["rows"] for s in shown["splits"].values()) == 400 and len(shown["examples"]) == 3


def test_generate_streams_and_is_reproducible(trained, capsys):
    args = ["generate", "--checkpoint", str(trained["lm"]), "--prompt", "The whale", "--seed", "7",
            "--max-new-tokens", "15"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("The whale")
    assert main(args + ["--strategy", "beam", "--num-beams", "3", "--impl", "cells"]) == 0


def test_chat_reads_turns_and_resets(trained, monkeypatch, capsys):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello!\nwhat do you do?\n/reset\n\nbye\n"))
    assert main(["chat", "--checkpoint", str(trained["chat"]), "--seed", "1", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("bot> ") == 3 and "(new conversation)" in out


def test_sentiment_texts_and_file(trained, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("good stuff\n\nbad stuff\n")
    assert main(["sentiment", "--checkpoint", str(trained["sentiment"]), "--json", "--file", str(f), "fine"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["fine", "good stuff", "bad stuff"]
    assert all(r["label"] in (0, 1) and 0.5 <= r["probability"] <= 1 for r in rows)


def test_eval_writes_metrics_json_only_with_record(trained, tmp_path, capsys):
    ck = shutil.copytree(trained["sentiment"], tmp_path / "sent")
    (ck / "metrics.json").unlink(missing_ok=True)
    args = ["eval", "--checkpoint", str(ck), "--corpus", str(SENTIMENT), "--json"]
    assert main(args + ["--max-examples", "16"]) == 0  # a quick check never touches the published numbers
    quick = json.loads(capsys.readouterr().out)
    assert quick["max_examples"] == 16 and not (ck / "metrics.json").exists()
    assert main(args + ["--output", str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(capsys.readouterr().out)
    assert not (ck / "metrics.json").exists()
    assert main(args + ["--record"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"task", "corpus", "split", "checkpoint", "metrics", "baselines"}
    stored = json.loads((ck / "metrics.json").read_text())
    assert stored[f"{SENTIMENT}:test"]["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    (ck / "metrics.json").write_text("[1, 2]")  # damaged: the next record replaces it rather than failing
    assert main(args + ["--record"]) == 0
    assert list(json.loads((ck / "metrics.json").read_text())) == [f"{SENTIMENT}:test"]


def test_eval_tag_keeps_results_of_two_decodings_side_by_side(trained, capsys):
    common = ["eval", "--checkpoint", str(trained["chat"]), "--corpus", str(CHAT), "--max-examples", "8",
              "--max-new-tokens", "6", "--record"]
    assert main(common + ["--strategy", "greedy", "--tag", "greedy"]) == 0
    assert main(common + ["--temperature", "0.8", "--top-p", "0.9"]) == 0
    capsys.readouterr()
    stored = json.loads((trained["chat"] / "metrics.json").read_text())
    assert stored[f"{CHAT}:test:greedy"]["decoding"]["strategy"] == "greedy"
    assert stored[f"{CHAT}:test"]["decoding"]["strategy"] == "sample"


@pytest.mark.parametrize("args,message", [
    (["generate", "--checkpoint", "/no/such/dir", "--prompt", "x"], "no checkpoint at /no/such/dir"),
    (["corpora", "show", "nonsense"], "unknown corpus 'nonsense'"),
    (["eval", "--checkpoint", "/no/such/dir", "--corpus", "wikitext2"], "no checkpoint"),
    (["train", "--task", "lm", "--corpus", "nonsense"], "unknown corpus"),
])
def test_errors_are_one_line_without_traceback(args, message):
    done = subprocess.run([sys.executable, "-m", "nlp", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_output_into_a_closed_pipe_is_not_reported_as_a_bug():
    """`python -m nlp ... | head`: when the reader has gone, the command stops quietly (exit 141, as SIGPIPE)."""
    p = subprocess.Popen([sys.executable, "-m", "nlp", "corpora", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    p.stdout.close()  # before it writes a line: its first write finds no reader
    err = p.stderr.read()
    assert p.wait() == 141 and err == ""


def test_wrong_model_kind_and_hostile_text(trained, capsys, tmp_path):
    assert main(["chat", "--checkpoint", str(trained["lm"])]) == 2
    assert "holds a language model, not a chat model" in capsys.readouterr().err
    chat = shutil.copytree(trained["chat"], tmp_path / "chat")
    config = json.loads((chat / "config.json").read_text())
    (chat / "config.json").write_text(json.dumps({**config, "decoding": {"top_p": 7}}))
    assert main(["chat", "--checkpoint", str(chat)]) == 2
    assert "config.json: a damaged \"decoding\"" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(trained["lm"]), "--prompt", "x" * 30_000]) == 2
    assert "limit is 20,000" in capsys.readouterr().err
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    assert main(["sentiment", "--checkpoint", str(trained["sentiment"]), "--file", str(binary)]) == 2
    assert "binary" in capsys.readouterr().err


def test_every_option_has_help():
    from nlp.__main__ import build_parser
    from nlp.config import build_parser as train_parser

    parsers = [train_parser()]
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    assert len(parsers) == 13
    for parser in parsers:
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 5, (parser.prog, action.option_strings)


def test_decoding_flags_left_out_take_the_checkpoints_default(trained):
    from nlp.__main__ import build_parser
    from nlp.checkpoint import load_checkpoint
    from nlp.commands import generation_config
    from nlp.serve import default_decoding

    ck = load_checkpoint(trained["chat"])
    base = ["chat", "--checkpoint", str(trained["chat"])]
    assert generation_config(build_parser().parse_args(base), ck) == default_decoding(ck)
    given = generation_config(build_parser().parse_args([*base, "--temperature", "0.5", "--num-candidates", "4"]), ck)
    assert (given.temperature, given.num_candidates) == (0.5, 4)
    assert given.repetition_penalty == default_decoding(ck).repetition_penalty
    assert given.cut_unfinished and not generation_config(
        build_parser().parse_args([*base, "--keep-unfinished"]), ck).cut_unfinished


def test_chat_with_sample_and_rank(trained, monkeypatch, capsys):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you?\n"))
    assert main(["chat", "--checkpoint", str(trained["chat"]), "--seed", "1", "--max-new-tokens", "8",
                 "--num-candidates", "4"]) == 0
    assert capsys.readouterr().out.count("bot> ") == 2


def test_generate_prints_readable_text_and_raw_tokens_on_request(trained, capsys):
    from nlp.tokenizer import detokenize_wikitext

    args = ["generate", "--checkpoint", str(trained["lm"]), "--prompt", "In 1851 , the whale", "--seed", "3",
            "--max-new-tokens", "20"]
    assert main([*args, "--raw"]) == 0
    raw = capsys.readouterr().out
    assert raw.startswith("In 1851 , the whale")
    assert main(args) == 0
    assert capsys.readouterr().out == detokenize_wikitext(raw.rstrip("\n")) + "\n"


@pytest.mark.parametrize("rows,message", [
    ("text,label\ngood,1\nbad,\n", "data row 2, column 'label': empty"),
    ("text,label\ngood,1\nbad,maybe\n", "data row 2, column 'label': 'maybe' is not a label"),
    ("text,rating\ngood,2.5\nbad,lots\n", "data row 2, column 'rating': 'lots' is not a number"),
    ("text,label\ngood,1\nbad,7\n", "data row 2, column 'label': 7 is not 0/1"),
])
def test_a_bad_cell_in_a_training_file_is_named_by_row_and_column(tmp_path, capsys, rows, message):
    f = tmp_path / "rows.csv"
    f.write_text(rows)
    assert main(["train", "--task", "sentiment", "--corpus", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_arguments_exit_2_with_one_line(trained, tmp_path, capsys):
    assert main(["sentiment", "--checkpoint", str(trained["sentiment"]), "--file", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a file" in err and len(err.strip().splitlines()) == 1
    for args, message in (
            (["eval", "--checkpoint", str(trained["lm"]), "--corpus", "wikitext2", "--max-examples", "-1"],
             "must be at least 0, got -1"),
            (["generate", "--checkpoint", str(trained["lm"]), "--num-samples", "0"], "must be at least 1, got 0"),
            (["generate", "--checkpoint", str(trained["lm"]), "--max-new-tokens", "many"], "not a whole number")):
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    for prompt in ("", "   \n"):  # an empty prompt is refused, as the app refuses it
        assert main(["generate", "--checkpoint", str(trained["lm"]), "--prompt", prompt]) == 2
        out = capsys.readouterr()
        assert not out.out and out.err.startswith("error: the prompt is empty") and len(out.err.splitlines()) == 1
    assert main(["generate", "--checkpoint", "README.md", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "README.md is a file, not a checkpoint" in err and "--out README.md" not in err


def test_an_unexpected_failure_is_reported_as_a_bug_not_as_bad_input(trained, monkeypatch, capsys):
    import nlp.serve

    def broken(*a, **kw):
        raise ValueError("an internal mistake")
    monkeypatch.setattr(nlp.serve, "classify", broken)
    assert main(["sentiment", "--checkpoint", str(trained["sentiment"]), "fine"]) == 1
    err = capsys.readouterr().err
    assert "an internal mistake" in err and "this is a bug" in err and "Traceback" in err
