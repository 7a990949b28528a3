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

pages = [
    st.Page("chat.py", title="Chat", icon=":material/chat:", default=True),
    st.Page("generate.py", title="Generate", icon=":material/edit_note:"),
    st.Page("sentiment.py", title="Sentiment", icon=":material/mood:"),
    st.Page("model_cards.py", title="Models", icon=":material/info:"),
]
st.navigation(pages).run()
