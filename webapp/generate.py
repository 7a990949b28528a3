"""Continue a prompt with the LSTM language model."""

import streamlit as st

from nlp.decoding import make_generator
from nlp.serve import continue_text, strip_control
from nlp.tokenizer import detokenize_wikitext
from ui import (
    MAX_PROMPT_CHARS,
    MAX_SAMPLES,
    decoding_controls,
    model_or_stop,
    settings_notice,
    show_plain,
)

st.title("Generate")
ck = model_or_stop("lm")
cfg, seed = decoding_controls("generate", ck)
st.caption("A 2-layer LSTM language model trained on WikiText-2 (Wikipedia articles, tokenized with spaces "
           f"around punctuation and <unk> for rare words). Prompts up to {MAX_PROMPT_CHARS:,} characters.")

settings_notice("generate", ck, cfg)

# no max_chars: a paste over the limit stays in the box, where the user sees it, and Generate refuses it
prompt = st.text_area(f"Prompt (up to {MAX_PROMPT_CHARS:,} characters)", "The history of the city", height=100)
samples = st.number_input("Number of samples", 1, MAX_SAMPLES, 1)
multiline = st.checkbox("Continue past the end of a paragraph", value=False)
raw = st.checkbox("Show the raw tokens", value=False,
                  help="WikiText writes ' @-@ ' for a hyphen, ' @,@ ' inside numbers and spaces around punctuation; "
                       "by default the text is shown as ordinary prose")
if st.button("Generate", type="primary"):
    text, removed = strip_control(prompt)
    if removed:
        st.caption(f"{removed} control character(s) were removed from the prompt.")
    if not text.strip():
        st.warning("The prompt is empty: type the beginning of a text for the model to continue.")
        st.stop()
    if len(text) > MAX_PROMPT_CHARS:
        st.warning(f"The prompt has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}. Shorten it and "
                   "press Generate again.")
        st.stop()
    cfg.stop_at_eos = not multiline
    for n in range(int(samples)):
        if samples > 1:
            st.subheader(f"Sample {n + 1}")
        gen = continue_text(ck, text, cfg, make_generator(None if seed is None else seed + n))
        with st.container(border=True):
            box = st.empty()  # the continuation streams in right after the prompt, in one text
            show_plain(box, text if raw else detokenize_wikitext(text))
            for _ in gen.stream:
                show_plain(box, text + gen.text if raw else detokenize_wikitext(text + gen.text))
        st.caption(f"{gen.tokens} tokens in {gen.seconds:.2f} s ({gen.tokens_per_second:.1f} tokens/s)"
                   + ("" if gen.text.strip() else " - the continuation is only whitespace"))
