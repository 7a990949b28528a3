"""Continue a prompt with the LSTM language model."""

import streamlit as st

from nlp.decoding import make_generator
from nlp.serve import continue_text, strip_control
from ui import MAX_PROMPT_CHARS, MAX_SAMPLES, decoding_controls, model_or_stop, plain

st.title("Generate")
ck = model_or_stop("lm")
cfg, seed = decoding_controls("generate", ck)
st.caption("A 2-layer LSTM language model trained on WikiText-2 (Wikipedia articles, tokenized with spaces "
           f"around punctuation and <unk> for rare words). Prompts up to {MAX_PROMPT_CHARS:,} characters.")

prompt = st.text_area("Prompt", "The history of the city", max_chars=MAX_PROMPT_CHARS, height=100)
samples = st.number_input("Number of samples", 1, MAX_SAMPLES, 1)
multiline = st.checkbox("Continue past the end of a paragraph", value=False)
if st.button("Generate", type="primary"):
    text, removed = strip_control(prompt)
    if removed:
        st.caption(f"{removed} control character(s) were removed from the prompt.")
    if len(text) > MAX_PROMPT_CHARS:
        st.warning(f"The prompt has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
        st.stop()
    cfg.stop_at_eos = not multiline
    for n in range(int(samples)):
        if samples > 1:
            st.subheader(f"Sample {n + 1}")
        gen = continue_text(ck, text, cfg, make_generator(None if seed is None else seed + n))
        with st.container(border=True):
            box, shown = st.empty(), text  # the continuation streams in right after the prompt, in one text
            box.markdown(plain(shown))
            for piece in gen.stream:
                shown += piece
                box.markdown(plain(shown))
        st.caption(f"{gen.tokens} tokens in {gen.seconds:.2f} s ({gen.tokens_per_second:.1f} tokens/s)"
                   + ("" if gen.text.strip() else " - the continuation is only whitespace"))
