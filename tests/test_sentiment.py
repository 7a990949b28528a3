"""Sentiment beyond the binary label: negation-aware augmentation, the neutral / mixed verdict chosen on
validation data, and the negation/contrast probe set."""

import json
import shutil

import pytest

from nlp.__main__ import main
from nlp.augment import at_all, augment, contrast, negate, neutral_sentences
from nlp.verdict import NEUTRAL, NeutralRule
from tests.conftest import CHAT, SENTIMENT, train_tiny


@pytest.mark.parametrize("text,expected", [
    ("The film is funny.", "The film is not funny."),
    ("It isn't funny.", "It is funny."),
    ("Isn't it lovely?", "Is it lovely?"),
    ("The soup was not good.", "The soup was good."),
    ("I don't like the ending.", "I do like the ending."),
    ("You will love it.", "You will not love it."),
    ("Great acting.", "Not great acting."),                    # a verbless phrase gets a leading "Not"
    ("A real snooze.", "Not a real snooze."),
    ("Shallow, noisy and pretentious.", "Not shallow, noisy and pretentious."),
])
def test_negate_flips_the_one_negation_or_copula(text, expected):
    assert negate(text) == expected


@pytest.mark.parametrize("text", [
    "The film is funny and the cast is great.",       # two copulas: which one carries it is unclear
    "It is never dull.",                               # another negation word
    "I can't see it, so I'm confused.",                # two clauses
    "Lacks depth.",                                    # a verb: "Not lacks depth" is no sentence
    "The sequences feel stagey.",                      # "the ...": a clause as often as a phrase
    "Just plain silly.",                               # "not just silly" is no flip
    "Hooray!",                                         # an interjection
    "@anonymous Even better!",                         # a mention
    "STOP TALKING",                                    # shouting
    "It was not bad, it was not good.",                # two negations
    " ".join(["word"] * 25) + " is long.",             # too long
    "This is lazy writing. Kids deserve better.",      # two sentences
])
def test_negate_refuses_what_it_cannot_flip_cleanly(text):
    assert negate(text) is None


def test_at_all_stresses_the_negation_before_the_end_punctuation():
    assert at_all("The film is not funny.") == "The film is not funny at all."
    assert at_all("Not great acting!!") == "Not great acting at all!!"
    assert at_all("Not good") == "Not good at all"


def test_contrast_joins_with_but():
    assert contrast("Great cast.", "The script is a mess.") == "Great cast, but the script is a mess."
    assert contrast("Slow start!", "I loved the end.") == "Slow start, but I loved the end."


def test_augment_labels_follow_the_rules_and_leave_the_input_alone():
    rows = [{"text": f"The {w} film is {adj}.", "label": lab, "rating": 2.0 if lab else -2.0, "domain": "d"}
            for w in ("first", "second", "third", "fourth", "fifth") for adj, lab in (("great", 1), ("awful", 0))]
    rows.append({"text": "It is fine.", "label": 1, "rating": 0.4, "domain": "d"})  # too weakly rated to use
    before = json.dumps(rows)
    extra = augment(rows, 1.0, seed=3)
    assert json.dumps(rows) == before
    assert extra == augment(rows, 1.0, seed=3) and augment(rows, 0.0) == []
    by_text = {r["text"]: r for r in rows}
    negated = [e for e in extra if ", but " not in e["text"]]
    joined = [e for e in extra if ", but " in e["text"]]
    assert len(negated) == len(joined) == len(rows) // 2  # half negations at most, as many contrasts
    for e in negated:
        source = by_text[e["text"].replace(" not ", " ").replace(" at all.", ".")]
        assert e["label"] == 1 - source["label"] and e["rating"] == -0.5 * source["rating"]
    for e in joined:
        second = e["text"].split(", but ")[1]
        source = by_text[second[0].upper() + second[1:]]
        assert e["label"] == source["label"] != by_text[e["text"].split(", but ")[0] + "."]["label"]
    assert all("fine" not in e["text"] for e in extra)


def test_training_with_negation_augment_adds_rows(tokenizer, tmp_path, capsys):
    train_tiny("sentiment", tmp_path / "aug", tokenizer.path, "--negation-augment", "0.3", "--max-steps", "2")
    err = capsys.readouterr().err
    assert "negation augmentation:" in err and int(err.split("negation augmentation: ")[1].split()[0]) > 0


def test_neutral_sentences_are_plain_statements_without_a_lexicon_word():
    texts = ["I love this great place so much!", "The bus leaves at nine from the station.", "This is awful.",
             "Where did you go to school?", "Short one.", "the bus leaves at nine   from the station.",
             "My brother works at the bank downtown.", "What a terrible, horrible day it was."]
    picked = neutral_sentences(texts, 10, seed=0)
    assert sorted(t.lower() for t in picked) == ["my brother works at the bank downtown.",  # one bus, spaces tidied
                                                 "the bus leaves at nine from the station.",
                                                 "where did you go to school?"]
    assert len(neutral_sentences(texts, 2, seed=0)) == 2  # at most n, no duplicates (case and spaces aside)
    assert neutral_sentences(texts, 2, seed=3) == neutral_sentences(texts, 2, seed=3)


def test_training_with_a_neutral_corpus_adds_rows(tokenizer, tmp_path, capsys):
    train_tiny("sentiment", tmp_path / "neutral", tokenizer.path, "--neutral-corpus", str(CHAT), "--neutral-rows",
               "20", "--max-steps", "2")
    err = capsys.readouterr().err
    assert "neutral sentences:" in err and 0 < int(err.split("neutral sentences: ")[1].split()[0]) <= 20


def test_a_no_opinion_row_is_trained_towards_equal_label_probabilities(tokenizer):
    """Its label loss is the cross-entropy against (0.5, 0.5): log 2 when the logits are equal, more when the
    model leans either way; it counts in no accuracy."""
    import math

    import torch

    from nlp.config import resolve_config
    from nlp.data import NO_OPINION, SentimentExample, collate_sentiment
    from nlp.tasks import SentimentTask

    task = SentimentTask(resolve_config(["--task", "sentiment", "--rating-weight", "0"]), torch.device("cpu"))
    batch = collate_sentiment([SentimentExample(tokenizer.encode("The bus leaves at nine."), NO_OPINION, 0.0)])

    def loss(logits):
        class Fixed(torch.nn.Module):
            def forward(self, ids, lengths):
                return {"logits": torch.tensor([logits])}
        value, n, _, extra = task.loss(Fixed(), batch, None, train=False)
        return float(value), extra["labelled"]
    assert loss([0.0, 0.0]) == (pytest.approx(math.log(2)), 0.0)
    assert loss([2.0, -2.0])[0] > math.log(2) + 0.5 and loss([-2.0, 2.0])[0] == pytest.approx(loss([2.0, -2.0])[0])


def test_neutral_rule_verdicts():
    assert NeutralRule().verdict(1, 0.51, 0.01) == "positive"  # the default never says neutral
    rule = NeutralRule(rating_below=0.5, probability_below=0.7, disagree=True)
    assert rule.verdict(1, 0.9, 2.0) == "positive" and rule.verdict(0, 0.9, -2.0) == "negative"
    assert rule.verdict(1, 0.9, 0.3) == NEUTRAL    # rating near zero
    assert rule.verdict(1, 0.6, 2.0) == NEUTRAL    # unsure label
    assert rule.verdict(0, 0.9, 1.5) == NEUTRAL    # rating contradicts the label
    assert NeutralRule(disagree=False).verdict(0, 0.9, 1.5) == "negative"


def test_a_text_without_an_opinion_word_is_neutral_unless_its_rating_is_strong():
    from nlp.lexicon import has_opinion

    assert has_opinion(["The museum opens at 9 am on weekdays.", "Not bad at all.", "A gorgeous film :)",
                        "I love it", ""]) == [False, True, True, True, False]
    rule = NeutralRule(rating_below=0.25, no_opinion_rating_below=1.5)
    assert rule.verdict(1, 0.87, 0.93, opinion=False) == NEUTRAL    # the museum sentence
    assert rule.verdict(1, 0.87, 0.93, opinion=True) == "positive"  # the same numbers for an opinion
    assert rule.verdict(0, 0.9, -2.0, opinion=False) == "negative"  # a strong rating stands without a word
    assert NeutralRule(rating_below=0.25).verdict(1, 0.87, 0.93, opinion=False) == "positive"  # off by default
    with pytest.raises(ValueError, match="no_opinion_rating_below"):
        NeutralRule(no_opinion_rating_below=-1)


def test_classify_applies_the_no_opinion_clause_to_what_the_model_read(trained):
    from nlp.serve import classify, open_checkpoint

    ck = open_checkpoint(trained["sentiment"], "sentiment")
    texts = ["The museum opens at 9 am on weekdays.", "What a wonderful, beautiful day!",
             "The bus leaves at noon. " * 200 + "I hate it."]  # the opinion lies past the tokens read
    everything = NeutralRule(probability_below=0.5, no_opinion_rating_below=4.0)
    rows = classify(ck, texts, max_len=64, rule=everything)
    assert [r["opinion"] for r in rows] == [False, True, False]
    assert [r["verdict"] for r in rows][0::2] == [NEUTRAL, NEUTRAL]
    assert rows[1]["verdict"] == everything.verdict(rows[1]["label"], rows[1]["probability"], rows[1]["rating"])
    assert classify(ck, texts[2:], max_len=100_000, rule=everything)[0]["opinion"]


def test_tune_sentiment_writes_a_rule_that_classify_and_eval_use(trained, tmp_path, capsys):
    ck = tmp_path / "sent"
    shutil.copytree(trained["sentiment"], ck)
    with pytest.raises(SystemExit):
        main(["tune-sentiment", "--checkpoint", str(ck), "--corpus", str(SENTIMENT), "--split", "test"])
    capsys.readouterr()
    assert main(["tune-sentiment", "--checkpoint", str(ck), "--corpus", str(SENTIMENT), "--write"]) == 0
    shown = json.loads(capsys.readouterr().out)
    stored = json.loads((ck / "config.json").read_text())
    assert stored["neutral"] == shown["neutral"] and stored["neutral_tuning"]["split"] == "validation"
    report = shown["report"]  # what the choice rests on, printed beside it
    assert report["chosen"]["macro_f1"] == stored["neutral_tuning"]["macro_f1"] >= report["never_neutral"]["macro_f1"]
    assert report["without_rating_floor"]["macro_f1"] >= report["chosen"]["macro_f1"]
    assert report["chosen"]["macro_f1"] >= report["without_lexicon_clause"]["macro_f1"]
    assert report["without_lexicon_clause"]["no_opinion_rating_below"] == 0 and report["chosen"]["rating_below"] >= 0.25
    assert set(report["by_corpus"]) == {str(SENTIMENT)} and 0 <= report["no_opinion_rows"] <= 1
    assert main(["sentiment", "--checkpoint", str(ck), "--json", "great", "awful"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rule = NeutralRule(**stored["neutral"])
    assert "no_opinion_rating_below" in stored["neutral"]
    assert [r["verdict"] for r in rows] == [rule.verdict(r["label"], r["probability"], r["rating"], r["opinion"])
                                            for r in rows]
    assert main(["eval", "--checkpoint", str(ck), "--corpus", str(SENTIMENT), "--json", "--output",
                 str(tmp_path / "m.json")]) == 0
    three = json.loads(capsys.readouterr().out)["metrics"]["three_way"]
    assert three["classes"] == ["negative", "positive", NEUTRAL] and 0 <= three["macro_f1"] <= 1


def test_probe_set_is_balanced_and_the_probe_command_reports_by_kind(trained, capsys):
    from nlp.tuning import PROBE

    rows = [json.loads(line) for line in PROBE.read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert len(rows) >= 40 and kinds == {"negation", "contrast", "sarcasm"}
    assert len({r["text"] for r in rows}) == len(rows)
    assert len([r for r in rows if r["kind"] == "sarcasm"]) >= 10  # praise of bad news: negative by nature
    for k in ("negation", "contrast"):
        labels = [r["label"] for r in rows if r["kind"] == k]
        assert 0.4 <= sum(labels) / len(labels) <= 0.6
    assert main(["probe-sentiment", "--checkpoint", str(trained["sentiment"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == len(rows) and set(result["by_kind"]) == kinds
    assert len(result["misses"]) == round((1 - result["accuracy"]) * len(rows))


def test_the_plain_statement_probe_counts_a_neutral_verdict_as_right(trained, capsys):
    from nlp.checkpoint import load_checkpoint
    from nlp.serve import classify
    from nlp.tuning import PROBE

    path = PROBE.parent / "sentiment_neutral_probe.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 40 and {r["label"] for r in rows} == {"neutral"} and len({r["text"] for r in rows}) == len(rows)
    assert main(["probe-sentiment", "--checkpoint", str(trained["sentiment"]), "--file", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    verdicts = [r["verdict"] for r in classify(load_checkpoint(trained["sentiment"]), [r["text"] for r in rows])]
    assert result["accuracy"] == pytest.approx(verdicts.count(NEUTRAL) / len(rows))
    assert {m["text"] for m in result["misses"]} == {r["text"] for r, v in zip(rows, verdicts) if v != NEUTRAL}


def test_distillation_keeps_what_the_teacher_gets_right(trained, tokenizer):
    """--distill-from (learning without forgetting): nothing to learn for a student that answers as its teacher,
    a positive term once it differs, and none on the rows the teacher gets wrong (the labels alone teach there)."""
    import torch

    from nlp.checkpoint import load_checkpoint
    from nlp.config import resolve_config
    from nlp.data import SentimentExample, collate_sentiment
    from nlp.tasks import SentimentTask

    task = SentimentTask(resolve_config(["--task", "sentiment", "--distill-from", str(trained["sentiment"])]),
                         torch.device("cpu"))
    texts = ["A gorgeous, moving and funny film.", "Dull and far too long.", "The battery died in a day.",
             "I loved every minute of it."]
    ids = [tokenizer.encode(t) for t in texts]
    teacher = load_checkpoint(trained["sentiment"]).model.eval()
    batch = collate_sentiment([SentimentExample(i, 0, 0.0) for i in ids])
    with torch.no_grad():
        same = teacher(batch["ids"], batch["lengths"])
    said = same["logits"].argmax(-1)
    other = {"logits": same["logits"] + torch.tensor([2.0, -2.0]), "rating": same["rating"] + 0.5}
    right = {**batch, "label": said}
    wrong = {**batch, "label": 1 - said}
    assert float(task.distillation(same, right)) == pytest.approx(0.0, abs=1e-5)
    assert float(task.distillation(other, right)) > 0.1
    assert float(task.distillation(other, wrong)) == 0.0


def test_training_with_distillation_needs_a_sentiment_teacher(trained, tokenizer, tmp_path):
    from nlp.checkpoint import CheckpointError

    teacher = str(trained["sentiment"])
    train_tiny("sentiment", tmp_path / "lwf", tokenizer.path, "--init-from", teacher, "--distill-from", teacher,
               "--max-steps", "2")
    assert (tmp_path / "lwf" / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="holds a language model, not a sentiment model"):
        train_tiny("sentiment", tmp_path / "bad", tokenizer.path, "--distill-from", str(trained["lm"]),
                   "--max-steps", "1")
