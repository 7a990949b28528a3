"""Sentiment of a sentence or a whole file, with the classifier's attention over the tokens."""

import html

import streamlit as st

import charts
from nlp.english import not_english
from nlp.serve import classify, strip_control
from nlp.verdict import NEUTRAL, NeutralRule
from ui import MAX_SENTENCE_CHARS, MAX_UPLOAD_BYTES, MAX_UPLOAD_ROWS, model_or_stop
from uploads import UploadError, csv_bytes, read_rows

LABELS = {0: "negative", 1: "positive"}

st.title("Sentiment")
ck = model_or_stop("sentiment")
st.caption("A BiLSTM with attention pooling, trained on rated movie reviews, tweets, product reviews and "
           "newspaper editorials. It gives a verdict, the probability of its label, and a rating from -4 "
           "(very negative) to +4 (very positive).")
rule = NeutralRule.of(ck)
if "neutral" in ck.config:
    st.caption(f"The verdict is *{NEUTRAL}* when the rating is within ±{rule.rating_below:g} of zero"
               + (f" or the label's probability is under {rule.probability_below:g}"
                  if rule.probability_below > 0.5 else "")
               + (" or the rating contradicts the label" if rule.disagree else "")
               + (f"; for a text without a single opinion word of the VADER sentiment lexicon (a statement of "
                  f"fact), when the rating is within ±{rule.no_opinion_rating_below:g}"
                  if rule.no_opinion_rating_below > 0 else "")
               + " (thresholds chosen on validation sentences).")


def shaded(tokens: list[str], weights: list[float]) -> str:
    """Tokens as HTML spans shaded by attention; every token is HTML-escaped, so only our markup renders."""
    top = max(weights) if weights else 1.0
    spans = [f'<span style="background: rgba(255, 160, 0, {w / top:.2f}); padding: 1px 0; border-radius: 3px">'
             f"{html.escape(t).replace(' ', '&nbsp;')}</span>" for t, w in zip(tokens, weights)]
    return '<div style="line-height: 2; font-size: 1.05rem">' + "".join(spans) + "</div>"


single, batch = st.tabs(["One text", "A file"])
with single:
    # no max_chars: a paste over the limit stays in the box, where the user sees it, and Analyse refuses it
    text = st.text_area(f"Text (up to {MAX_SENTENCE_CHARS:,} characters)", "A gorgeous, moving and funny film.")
    if st.button("Analyse", type="primary"):
        clean, removed = strip_control(text)
        if not clean.strip():
            st.warning("The text is empty: type a sentence to analyse.")
        elif len(clean) > MAX_SENTENCE_CHARS:
            st.warning(f"The text has {len(clean):,} characters; the limit is {MAX_SENTENCE_CHARS:,}. Shorten it "
                       "and press Analyse again.")
        else:
            if removed:
                st.caption(f"{removed} control character(s) were removed.")
            r = classify(ck, [clean])[0]
            if why := not_english(clean):
                st.warning(f"This text does not look like English ({why}). The classifier was trained on English "
                           "only, so its verdict on other languages means little.")
            c1, c2, c3 = st.columns(3)
            c1.metric("Verdict", r["verdict"],
                      help=(f"leans {LABELS[r['label']]}" + ("" if r["opinion"] else "; no opinion word")
                            if r["verdict"] == NEUTRAL else None))
            c2.metric("Probability", f"{r['probability']:.2f}")
            if "rating" in r:
                c3.metric("Rating (-4 .. +4)", f"{r['rating']:+.2f}")
            if len(r["tokens"]) < len(ck.tokenizer.encode(clean)):
                st.caption(f"Only the first {len(r['tokens'])} tokens were read.")
            st.markdown("**Where the classifier looked** (darker = more attention):")
            st.markdown(shaded(r["tokens"], r["attention"]), unsafe_allow_html=True)

with batch:
    st.markdown(f"Upload a **CSV** (choose its text column) or a **TXT** file (one text a line): at most "
                f"{MAX_UPLOAD_BYTES // 1_000_000} MB and {MAX_UPLOAD_ROWS:,} rows.")
    upload = st.file_uploader("File", type=["csv", "txt"])
    if upload is not None:
        data = upload.getvalue()
        table = None
        if len(data) > MAX_UPLOAD_BYTES:
            st.error(f"The file has {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}.")
        elif b"\x00" in data:
            st.error("The file looks binary (it contains NUL bytes); upload a UTF-8 CSV or text file.")
        else:
            try:
                table = read_rows(upload.name, data.decode("utf-8-sig"), MAX_UPLOAD_ROWS)
            except UnicodeDecodeError:
                st.error("The file is not UTF-8 text.")
            except UploadError as e:
                st.error(str(e))
        if table is not None:
            columns, rows = table
            guess = columns.index("text") if "text" in columns else (0 if len(columns) == 1 else None)
            column = st.selectbox("Text column", columns, index=guess, placeholder="Choose the column to score",
                                  help="the column that holds the texts; the others are kept in the download")
            if column is None:  # no column named "text": never guess (an id column would be scored)
                st.info(f"The file has no column named 'text'. Choose which of its {len(columns)} columns "
                        "holds the texts to score.")
                st.stop()
            texts = [strip_control(row[column])[0][:MAX_SENTENCE_CHARS] for row in rows]
            results = classify(ck, texts)
            predicted = [{"verdict": r["verdict"], "label": LABELS[r["label"]],
                          "probability": round(r["probability"], 4),
                          **({"rating": round(r["rating"], 3)} if "rating" in r else {})} for r in results]
            # sortable and scrolling for thousands of rows: st.dataframe (which loads pandas, on this path only)
            st.dataframe([{"text": row[column], **p} for row, p in zip(rows, predicted)], width="stretch",
                         hide_index=True)
            charts.show(charts.verdict_bars([p["verdict"] for p in predicted]))
            extra = [f"predicted_{name}" for name in predicted[0]]
            download = [{**row, **{f"predicted_{k}": v for k, v in p.items()}} for row, p in zip(rows, predicted)]
            st.download_button("Download the file with predictions (CSV)", csv_bytes(columns + extra, download),
                               file_name="sentiment_predictions.csv", mime="text/csv",
                               help="every column of your file, then the predictions; a cell that starts like a "
                                    "spreadsheet formula (= + - @) gets a leading ' so that it is never run")
            if any(len(row[column]) > MAX_SENTENCE_CHARS for row in rows):
                st.caption(f"Texts longer than {MAX_SENTENCE_CHARS:,} characters were read up to that length.")
