"""What each model is: size, configuration, training curves and test metrics with baselines."""

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
def numbers(values: dict) -> dict[str, str]:
    """The numeric entries, as text to 4 significant digits (counts in full): a table of strings shows no
    "None" and no 0.000000000002."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k.replace("_", " ")] = f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    return out


NAMES = {"chat": "Chat (encoder-decoder with attention)", "lm": "Language model", "sentiment": "Sentiment classifier"}
for task, title in NAMES.items():
    st.header(title)
    path = checkpoints_dir() / task
    try:
        ck = load_cached(str(path))
    except CheckpointError as e:
        st.warning(f"Not available: {e}")
        st.code(f"python -m nlp train --config {RECIPES[task]}", language="bash")
        continue
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{ck.config.get('parameters', 0):,}")
    c2.metric("Folder size", f"{size / 1e6:.1f} MB")
    c3.metric("Stored as", ck.config.get("dtype", "float32"))
    with st.expander("Configuration (config.json)"):
        st.json({k: ck.config[k] for k in ("model", "train", "data") if k in ck.config})
    rows = [{"step": r["step"], "loss": r[key], "curve": key.replace("_", " ")}
            for r in read_train_log(path) for key in ("train_loss", "val_loss") if key in r and "step" in r]
    if rows:
        st.altair_chart(alt.Chart(pd.DataFrame(rows)).mark_line(point=True).encode(
            x="step:Q", y=alt.Y("loss:Q", scale=alt.Scale(zero=False)), color="curve:N"),
            width="stretch")
        smoothing = ck.config.get("train", {}).get("label_smoothing", 0)
        st.caption("Train loss: the mean over the steps since the previous log line, in training mode (dropout on"
                   + (f", label smoothing {smoothing:g} added" if smoothing else "") + "); val loss: the validation "
                   "split in evaluation mode, so train loss can sit above it. (In logs of older runs the train "
                   "loss is a running mean since the run started, which makes a flatter curve.)")
    if isinstance(ck.config.get("decoding"), dict):
        with st.expander("Default decoding (chosen on validation data)"):
            st.json(ck.config["decoding"])
    reading = [{"step": r["step"], "value": r[key], "measure": label} for r in read_train_log(path)
               for key, label in CONTEXT_CURVES.items() if key in r and "step" in r]
    if reading:
        st.altair_chart(alt.Chart(pd.DataFrame(reading)).mark_line(point=True).encode(
            x="step:Q", y="value:Q", color="measure:N"), width="stretch")
        st.caption("Does the model read the conversation? Context gain: how much worse (in nats a token) it "
                   "predicts the validation replies after another conversation's context than after their own. "
                   "Next-reply accuracy: how often its next-reply head picks the true reply among those of a "
                   "validation batch.")
    if ck.metrics:
        for name, result in ck.metrics.items():
            if not isinstance(result, dict) or "metrics" not in result:
                continue
            st.subheader(f"Test metrics: {name}")
            table = {"this model": numbers(result["metrics"])}
            for base, values in result.get("baselines", {}).items():
                if isinstance(values, dict):
                    table[base.replace("_", " ")] = numbers(values)
            st.dataframe(pd.DataFrame(table).fillna(""), width="stretch")
    else:
        st.caption(f"No {METRICS} yet: `python -m nlp eval --checkpoint {path} --corpus ... --split test`.")
