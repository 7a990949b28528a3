"""Charts and tables drawn from plain lists of dicts, without pandas, pyarrow or altair.

Streamlit turns a chart's or a table's data into Arrow; pyarrow then imports pandas, and altair adds its own
schema machinery: about 90 MB of imports for pages that draw a few hundred points (with them the server of 8
sessions on every page peaked at 609 MB, without them at 495 MB: tests/test_browser.py, 2-core AVX512-BF16
EPYC). So the charts here are Vega-Lite specs whose data sit inside a layer (Streamlit moves
only top-level data into Arrow; Vega-Lite reads a layer's own `data.values` as it reads the top level's), and
small tables are HTML with every cell escaped. The sentiment page's file results (up to thousands of rows,
sortable) still use st.dataframe, so pandas loads when someone analyses a file.
"""

import html
from collections import Counter

import streamlit as st

# Fixed colours, so a verdict is the same colour on every chart and positive is never red
VERDICT_COLOURS = {"positive": "#2e7d32", "negative": "#c62828", "neutral / mixed": "#9e9e9e"}
WHOLE_LEGEND = {"labelLimit": 0, "orient": "bottom", "direction": "vertical"}  # labels never cut


def chart(rows: list[dict], mark: dict | str, encoding: dict, height: int | None = None) -> dict:
    """A Vega-Lite spec drawing `rows` with one mark; the data inside the layer (see the module's docstring)."""
    spec = {"layer": [{"data": {"values": rows}, "mark": mark, "encoding": encoding}]}
    if height:
        spec["height"] = height
    return spec


def lines(rows: list[dict], y_title: str, colour: str | None = None, zero: bool = True) -> dict:
    """Lines with points of rows {"step", "value", colour?}; the value axis starts at zero unless `zero=False`
    (a ratio read from an axis cut above zero looks like a change it is not)."""
    encoding = {"x": {"field": "step", "type": "quantitative", "title": "step"},
                "y": {"field": "value", "type": "quantitative", "title": y_title, "scale": {"zero": zero}},
                "tooltip": [{"field": "step", "type": "quantitative"},
                            {"field": "value", "type": "quantitative", "format": ".4g"}]}
    if colour:
        encoding["color"] = {"field": colour, "type": "nominal", "title": None, "legend": WHOLE_LEGEND}
        encoding["tooltip"].insert(0, {"field": colour, "type": "nominal"})
    return chart(rows, {"type": "line", "point": True}, encoding)


def verdict_bars(verdicts: list[str]) -> dict:
    """How many texts got each verdict: whole-number counts, each verdict in its fixed colour."""
    counts = Counter(verdicts)
    domain = sorted(counts, key=lambda v: list(VERDICT_COLOURS).index(v) if v in VERDICT_COLOURS else len(counts))
    rows = [{"verdict": v, "texts": counts[v]} for v in domain]
    return chart(rows, "bar", {
        "x": {"field": "verdict", "type": "nominal", "sort": domain, "axis": {"labelAngle": 0}},
        "y": {"field": "texts", "type": "quantitative", "title": "texts", "axis": {"tickMinStep": 1, "format": "d"}},
        "color": {"field": "verdict", "type": "nominal", "legend": None,
                  "scale": {"domain": domain, "range": [VERDICT_COLOURS.get(v, "#5c6bc0") for v in domain]}},
        "tooltip": [{"field": "verdict", "type": "nominal"}, {"field": "texts", "type": "quantitative"}]})


def heatmap(rows: list[dict], x: str, y: str, value: str, x_title: str, y_title: str) -> dict:
    """Cells of rows {x, y, value} in their given order, shaded by value."""
    return chart(rows, "rect", {
        "x": {"field": x, "type": "nominal", "sort": None, "title": x_title},
        "y": {"field": y, "type": "nominal", "sort": None, "title": y_title},
        "color": {"field": value, "type": "quantitative", "scale": {"scheme": "blues"}},
        "tooltip": [{"field": y, "type": "nominal"}, {"field": x, "type": "nominal"},
                    {"field": value, "type": "quantitative", "format": ".3f"}]})


def show(spec: dict) -> None:
    st.vega_lite_chart(spec, width="stretch")


def table_html(rows: list[dict], index: str | None = None) -> str:
    """An HTML table of `rows` (columns in first-seen order; a missing cell blank). Every header and cell is
    escaped, so text from a user, a corpus or a file shows exactly as written and no markup of its own runs.
    `index` names a column shown as the row headers."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]

    def cell(tag: str, value) -> str:
        return f"<{tag}>{html.escape('' if value is None else str(value))}</{tag}>"
    head = "".join(cell("th", c) for c in columns)
    body = "".join("<tr>" + "".join(cell("th" if c == index else "td", row.get(c)) for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def show_table(rows: list[dict], index: str | None = None) -> None:
    st.markdown(table_html(rows, index), unsafe_allow_html=True)
