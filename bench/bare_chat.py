"""A Streamlit chat page with no model (no torch import, an echo for a reply): bench/cold_start.py's floor, what
Streamlit and the browser alone take on this machine from process start to a reply on the page.

    streamlit run bench/bare_chat.py
"""

import streamlit as st

st.title("Chat")
if message := st.chat_input("Say something"):
    with st.chat_message("user"):
        st.markdown(message)
    with st.chat_message("assistant"):
        st.markdown(f"You said: {message}")
