"""scripts/blind_ssa.py: the blind file hides the systems, and the labels score into SSA per system."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import blind_ssa  # noqa: E402


def test_collect_hides_the_systems_and_score_counts_each_label(tmp_path):
    contexts = tmp_path / "contexts.jsonl"
    contexts.write_text("\n".join(json.dumps({"context": c}) for c in (["How are you?"], ["Hi", "Hello!", "I ran"])))
    out = tmp_path / "round"
    blind_ssa.main(["collect", "--out", str(out), "--systems", "idk_ok_bot", "--contexts", str(contexts)])
    shown = (out / "replies.txt").read_text()
    assert "idk_ok_bot" not in shown and "I don't know." in shown and "Ok." in shown
    assert "  user: I ran" in shown and "  bot : Hello!" in shown
    key = json.loads((out / "key.json").read_text())["key"]
    assert len(key) == 2 and set(key.values()) == {"idk_ok_bot"}
    with pytest.raises(SystemExit, match="not labelled"):
        blind_ssa.main(["score", str(out), "--labelled-by", "test", "--output", str(tmp_path / "ssa.json")])
    ids = list(key)
    (out / "labels.txt").write_text(f"{ids[0]} s\n{ids[1]} -\n")
    blind_ssa.main(["score", str(out), "--labelled-by", "test", "--output", str(tmp_path / "ssa.json")])
    row = json.loads((tmp_path / "ssa.json").read_text())["round"]["systems"]["idk_ok_bot"]
    assert row == {"n": 2, "sensible": 0.5, "specific": 0.0, "ssa": 0.25}
    (out / "labels.txt").write_text(f"{ids[0]} maybe\n")
    with pytest.raises(SystemExit, match="expected"):
        blind_ssa.main(["score", str(out), "--labelled-by", "test", "--output", str(tmp_path / "ssa.json")])
    with pytest.raises(SystemExit, match="already holds"):
        blind_ssa.main(["collect", "--out", str(out), "--systems", "idk_ok_bot", "--contexts", str(contexts)])


def test_carry_labels_the_same_reply_in_the_same_conversation_alike(tmp_path):
    contexts = tmp_path / "contexts.jsonl"
    contexts.write_text("\n".join(json.dumps({"context": c}) for c in (["How are you?"], ["I ran"])))
    for name in ("a", "b"):
        blind_ssa.main(["collect", "--out", str(tmp_path / name), "--systems", "idk_ok_bot", "--contexts",
                        str(contexts), "--seed", str(len(name) + ord(name))])
    ids_a = [line.split()[0] for line in (tmp_path / "a" / "labels.txt").read_text().splitlines()]
    (tmp_path / "a" / "labels.txt").write_text(f"{ids_a[0]} s\n{ids_a[1]} -\n")
    blind_ssa.main(["carry", str(tmp_path / "b"), "--source", str(tmp_path / "a")])
    carried = blind_ssa.read_labels(tmp_path / "b" / "labels.txt")
    texts = blind_ssa.replies_by_context(tmp_path / "b")
    assert sorted(carried.values()) == ["-", "s"] and set(carried) == set(texts)
    assert carried[next(r for r, (_, t) in texts.items() if t == "I don't know.")] == "s"


def test_compare_pairs_two_systems_by_context(tmp_path, capsys):
    """Two systems on three contexts: A's replies worth 1, 0.5, 1 and B's 0.5, 0.5, 0: +0.5 on average; one
    context where they say the same thing is not counted among the replies that differ."""
    folder = tmp_path / "round"
    folder.mkdir()
    blocks, key, labels = [], {}, []
    for n, (context, (ta, la), (tb, lb)) in enumerate([("Hi", ("Hello! Nice day.", "sp"), ("Ok.", "s")),
                                                       ("I ran", ("Ok.", "s"), ("Ok.", "s")),
                                                       ("Any pets?", ("A cat, Tom.", "sp"), ("Blue.", "-"))], 1):
        blocks.append(f"=== {n}\n  user: {context}\n    [a{n}] {ta}\n    [b{n}] {tb}")
        key.update({f"a{n}": "A", f"b{n}": "B"})
        labels += [f"a{n} {la}", f"b{n} {lb}"]
    (folder / "replies.txt").write_text(blind_ssa.PROTOCOL + "\n" + "\n\n".join(blocks) + "\n")
    (folder / "key.json").write_text(json.dumps({"key": key}))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    blind_ssa.main(["compare", str(folder), "A", "B", "--resamples", "200"])
    out = capsys.readouterr().out
    assert "A - B on 3 contexts: +0.500" in out
    assert "replies that differ: 2; label pairs (A, B): sp / -: 1, sp / s: 1" in out
