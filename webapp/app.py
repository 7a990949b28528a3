"""The web app: chat, text generation and sentiment analysis on the shipped checkpoints.

    streamlit run webapp/app.py
"""

import sys
from pathlib import Path

import streamlit as st

# `streamlit run webapp/app.py` puts webapp/ on the import path, not the repository: the pages need both
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webapp.__main__ import lean_memory  # noqa: E402

lean_memory()  # what `python -m webapp` sets first, for hosts that run this file (Streamlit Community Cloud)

# the icon ships with the app: a Material icon here would be fetched from a font host, which fails offline
ICON = Path(__file__).resolve().parent / "static" / "icon.png"
st.set_page_config(page_title="Recurrent chat, generation & sentiment", page_icon=str(ICON), layout="wide")

from ui import PAGE_TASKS, served_tasks  # noqa: E402

try:
    served = served_tasks()
except ValueError as e:  # a host's setting: said on the page, and nothing else is served
    st.error(str(e))
    st.stop()
PAGES = {"chat": ("Chat", ":material/chat:"), "generate": ("Generate", ":material/edit_note:"),
         "sentiment": ("Sentiment", ":material/mood:")}
shown = [name for name in PAGES if PAGE_TASKS[name] in served]
pages = [st.Page(f"{name}.py", title=PAGES[name][0], icon=PAGES[name][1], default=name == shown[0]) for name in shown]
pages.append(st.Page("model_cards.py", title="Models", icon=":material/info:"))
st.navigation(pages).run()
