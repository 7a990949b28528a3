"""What each model is: size, configuration, training curves and test metrics with baselines."""

import math

import altair as alt
import pandas as pd
import streamlit as st

from nlp.checkpoint import METRICS, CheckpointError, read_train_log
from ui import RECIPES, checkpoints_dir, load_cached

st.title("Models")
st.caption("Every number here comes from the files in the checkpoint folder: its training log and the "
           "metrics.json that `python -m nlp eval --record` wrote.")

CONTEXT_CURVES = {"val_context_gain": "context gain (nats a token)",
                  "val_rank_accuracy": "next-reply accuracy (in a batch)"}


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve(log: list[dict], keys: dict[str, str], name: str) -> list[dict]:
    """Chart rows {"step", "value", name} for each record and key that hold numbers (a damaged line holds none)."""
    return [{"step": r["step"], "value": r[key], name: label} for r in log for key, label in keys.items()
            if is_number(r.get("step")) and is_number(r.get(key))]


def numbers(values: dict) -> dict[str, str]:
    """The numeric entries, as text to 4 significant digits (counts in full): a table of strings shows no
    "None" and no 0.000000000002."""
    return {str(k).replace("_", " "): f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
            for k, v in values.items() if is_number(v)}


NAMES = {"chat": "Chat (encoder-decoder with attention)", "lm": "Language model", "sentiment": "Sentiment classifier"}
for task, title in NAMES.items():
    st.header(title)
    path = checkpoints_dir() / task
    try:
        ck = load_cached(str(path), task)
    except CheckpointError as e:
        st.warning(f"Not available: {e}")
        st.code(RECIPES[task], language="bash")
        continue
    problems = list(ck.problems)
    log = read_train_log(path, problems)
    for problem in problems:
        st.warning(problem)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{sum(p.numel() for p in ck.model.parameters()):,}")
    c2.metric("Folder size", f"{size / 1e6:.1f} MB")
    c3.metric("Stored as", str(ck.config.get("dtype", "float32")))
    with st.expander("Configuration (config.json)"):
        st.json({k: ck.config[k] for k in ("model", "train", "data") if k in ck.config})
    rows = curve(log, {"train_loss": "train loss", "val_loss": "val loss"}, "curve")
    if rows:
        st.altair_chart(alt.Chart(pd.DataFrame(rows)).mark_line(point=True).encode(
            x="step:Q", y=alt.Y("value:Q", title="loss", scale=alt.Scale(zero=False)), color="curve:N"),
            width="stretch")
        smoothing = ck.config.get("train", {}).get("label_smoothing", 0)
        st.caption("Train loss: the mean over the steps since the previous log line, in training mode (dropout on"
                   + (f", label smoothing {smoothing:g} added" if is_number(smoothing) and smoothing else "")
                   + "); val loss: the validation "
                   "split in evaluation mode, so train loss can sit above it. (In logs of older runs the train "
                   "loss is a running mean since the run started, which makes a flatter curve.)")
    words = curve(log, {"val_word_perplexity": "validation"}, "curve")
    if words:
        st.altair_chart(alt.Chart(pd.DataFrame(words)).mark_line(point=True).encode(
            x="step:Q", y=alt.Y("value:Q", title="word perplexity", scale=alt.Scale(zero=False))),
            width="stretch")
        st.caption("Word perplexity of the validation replies: exp(their total NLL / their words), a reply's "
                   "words counted as whitespace-separated words plus its end, as `eval` counts them (the "
                   "validation batches hold replies cut as in training).")
    if isinstance(ck.config.get("decoding"), dict):
        with st.expander("Default decoding (chosen on validation data)"):
            st.json(ck.config["decoding"])
    reading = curve(log, CONTEXT_CURVES, "measure")
    if reading:
        st.altair_chart(alt.Chart(pd.DataFrame(reading)).mark_line(point=True).encode(
            x="step:Q", y="value:Q", color="measure:N"), width="stretch")
        st.caption("Does the model read the conversation? Context gain: how much worse (in nats a token) it "
                   "predicts the validation replies after another conversation's context than after their own. "
                   "Next-reply accuracy: how often its next-reply head picks the true reply among those of a "
                   "validation batch.")
    if ck.metrics:
        for name, result in ck.metrics.items():  # entries checked on load: "metrics" and "baselines" are objects
            st.subheader(f"Test metrics: {name}")
            table = {"this model": numbers(result["metrics"])}
            for base, values in result.get("baselines", {}).items():
                if isinstance(values, dict):
                    table[str(base).replace("_", " ")] = numbers(values)
            st.dataframe(pd.DataFrame(table, dtype=object).fillna(""), width="stretch")
        if task == "chat":
            st.caption("Hits at 1: how often the true reply comes first among 20 replies (19 from other "
                       "conversations), ranked by the score the Chat page ranks its candidates with: the model's "
                       "next-reply head and likelihoods plus the reply's word overlap with the conversation "
                       "(weights under Default decoding). The TF-IDF ranking baseline: by TF-IDF word overlap alone.")
    else:
        st.caption(f"No results in {METRICS} yet: `python -m nlp eval --checkpoint {path} --corpus ... --split test`.")
