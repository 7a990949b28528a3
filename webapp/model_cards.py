"""What each model is: size, configuration, training curves and evaluation results with baselines."""

import math
from pathlib import Path

import streamlit as st

import charts
from nlp.checkpoint import LOG, METRICS, CheckpointError, read_train_log
from ui import RECIPES, checkpoints_dir, load_cached, served_tasks

st.title("Models")
st.caption("Every number here comes from the files in the checkpoint folder: its training log and the "
           "metrics.json that `python -m nlp eval --record` wrote.")

CONTEXT_CURVES = {"val_context_gain": "context gain vs the previous row's context (nats a token)",
                  "val_rank_accuracy": "next-reply accuracy (among a batch's replies)"}


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve(log: list[dict], keys: dict[str, str], name: str) -> list[dict]:
    """Chart rows {"step", "value", name} for each record and key that hold numbers (a damaged line holds none)."""
    return [{"step": r["step"], "value": r[key], name: label} for r in log for key, label in keys.items()
            if is_number(r.get("step")) and is_number(r.get(key))]


def stage_logs(path: Path, problems: list[str]) -> tuple[list[dict], list[str]]:
    """Every training stage's log in the folder (train_log.jsonl is the last stage; a chat model's earlier
    stages kept theirs as <stage>_train_log.jsonl), in the order they ran, as one log whose steps run on from
    stage to stage; and a line per stage saying which steps it covers."""
    stages = []
    earlier = sorted(f for f in path.glob(f"*_{LOG}") if f.is_file())
    for file in [*earlier, path]:  # the folder: its own log, which read_train_log checks
        records = read_train_log(file, problems)
        steps = [r["step"] for r in records if is_number(r.get("step"))]
        if steps:
            first = next((r["time"] for r in records if is_number(r.get("time"))), math.inf)
            name = "last stage" if file == path else file.name.removesuffix(LOG).rstrip("_")
            stages.append((first, name, records, max(steps)))
    stages.sort(key=lambda stage: stage[0])
    log, said, offset = [], [], 0
    for _, name, records, last in stages:
        log += [{**r, "step": r["step"] + offset} for r in records if is_number(r.get("step"))]
        said.append(f"{name}: steps {offset:,}-{offset + last:,}")
        offset += last
    return log, said


def numbers(values: dict) -> dict[str, str]:
    """The numeric entries, as text to 4 significant digits (counts in full): a table of strings shows no
    "None" and no 0.000000000002."""
    return {str(k).replace("_", " "): f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
            for k, v in values.items() if is_number(v)}


NAMES = {"chat": "Chat (encoder-decoder with attention)", "lm": "Language model", "sentiment": "Sentiment classifier"}
for task in served_tasks():  # app.py has checked the setting
    st.header(NAMES[task])
    path = checkpoints_dir() / task
    try:
        ck = load_cached(str(path), task)
    except CheckpointError as e:
        st.warning(f"Not available: {e}")
        st.code(RECIPES[task], language="bash")
        continue
    problems = list(ck.problems)
    log, stages = stage_logs(path, problems)
    for problem in problems:
        st.warning(problem)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{sum(p.numel() for p in ck.model.parameters()):,}")
    c2.metric("Folder size", f"{size / 1e6:.1f} MB")
    c3.metric("Stored as", str(ck.config.get("dtype", "float32")))
    with st.expander("Configuration (config.json)"):
        st.json({k: ck.config[k] for k in ("model", "train", "data") if k in ck.config})
    in_stages = (f" The model was trained in {len(stages)} stages, drawn one after another ("
                 + "; ".join(stages) + ").") if len(stages) > 1 else ""
    rows = curve(log, {"train_loss": "train loss", "val_loss": "val loss"}, "curve")
    if rows:
        charts.show(charts.lines(rows, "loss (nats a token)", colour="curve"))
        smoothing = ck.config.get("train", {}).get("label_smoothing", 0)
        st.caption("Train loss: the mean over the steps since the previous log line, in training mode (dropout on"
                   + (f", label smoothing {smoothing:g} added" if is_number(smoothing) and smoothing else "")
                   + "); val loss: the validation split in evaluation mode, so train loss can sit above it. "
                   "Stages that train with another objective (a ranking term) log a train loss that holds it "
                   "too." + in_stages
                   + (" The validation loss was measured once in this run, so it is a single point."
                      if sum(r["curve"] == "val loss" for r in rows) == 1 else ""))
    words = curve(log, {"val_word_perplexity": "validation"}, "curve")
    if words:
        charts.show(charts.lines(words, "word perplexity"))
        st.caption("Word perplexity of the validation replies: exp(their total NLL / their words), a reply's "
                   "words counted as whitespace-separated words plus its end, as `eval` counts them (the "
                   "validation batches hold replies cut as in training).")
    if isinstance(ck.config.get("decoding"), dict):
        with st.expander("Default decoding (chosen on validation data)"):
            st.json(ck.config["decoding"])
    reading = curve(log, CONTEXT_CURVES, "measure")
    if reading:
        charts.show(charts.lines(reading, "validation measure", colour="measure"))
        st.caption("Does the model read the conversation? Context gain: how much worse (in nats a token) it "
                   "predicts the validation replies after another conversation's context than after their own. "
                   "Next-reply accuracy: how often its next-reply head picks the true reply among those of a "
                   "validation batch.")
    if ck.metrics:
        for name, result in ck.metrics.items():  # entries checked on load: "metrics" and "baselines" are objects
            corpus, _, split = str(name).partition(":")
            st.subheader(f"{corpus}: {split} split" if split else f"Results: {name}")
            table = {"this model": numbers(result["metrics"])}
            for base, values in result.get("baselines", {}).items():
                if isinstance(values, dict):
                    table[str(base).replace("_", " ")] = numbers(values)
            measures = list(dict.fromkeys(m for column in table.values() for m in column))
            charts.show_table([{"measure": m, **{who: column.get(m, "") for who, column in table.items()}}
                               for m in measures], index="measure")
        if task == "chat":
            st.caption("These results are of the model's own replies (sampled and ranked by its tuned score), "
                       "recorded before the chat answered from the index of training replies. Hits at 1: how often "
                       "the true reply comes first among 20 replies (19 from other conversations) by that score; "
                       "the TF-IDF ranking baseline ranks by TF-IDF word overlap alone. What people judge of the "
                       "replies the chat gives now: docs/chat.md.")
    else:
        st.caption(f"No results in {METRICS} yet: `python -m nlp eval --checkpoint {path} --corpus ... --split test`.")
