"""Chat with the attention-augmented LSTM encoder-decoder."""

import time

import streamlit as st

import charts
from ui import (
    FIRST_REPLY,
    MAX_CHAT_MESSAGES,
    MAX_MESSAGE_CHARS,
    decoding_controls,
    index_loader,
    model_or_stop,
    settings_notice,
    show_plain,
)

BOX_FIRST_S = 0.1

st.title("Chat")
# The chat box first (Streamlit pins it to the bottom wherever it is called): on a cold start it shows while the
# model is still loading, and a message sent meanwhile waits for the load instead of for the page
prompt = st.chat_input(f"Say something (up to {MAX_MESSAGE_CHARS:,} characters)")
if "chat-box-sent" not in st.session_state:
    # A session's first run: a pause that lets the server send the box on its own. Sent in one batch with the
    # sidebar's sliders, it showed only once the browser had drawn them all, 0.5 s later (bench/cold_start.py).
    # Once a session: a message sent during the first run reruns the page at once, and pays no second pause
    time.sleep(BOX_FIRST_S)
    st.session_state["chat-box-sent"] = True

# The library only now (`ui` does not import it): on a cold start torch's import is still under way, and the box
# above is on its way to the browser meanwhile
from nlp.decoding import GenerationError, make_generator  # noqa: E402
from nlp.serve import DEFAULT_SOURCE, MIN_SIMILARITY, chat_reply, strip_control  # noqa: E402

ck = model_or_stop("chat")
st.sidebar.subheader("Replies")
generated_only = st.sidebar.toggle(
    "Model-written replies only", key="chat-generated-only",
    help="only replies the model writes itself; otherwise the chat answers with the reply people gave in the "
         "training dialogues to the context most like yours (chosen by the model's ranker), or says plainly that "
         "it has nothing fitting (docs/chat.md: blind judges found the model's own replies made sense 8% of the "
         "time, the retrieved ones 36%)")
cfg, seed = decoding_controls("chat", ck)
loader = index_loader(str(ck.path))
turns = ck.config.get("train", {}).get("context_turns", 3)
st.caption(f"An LSTM encoder-decoder with attention, trained on everyday and movie dialogue. It sees the last "
           f"{turns} turns of the conversation. Messages up to {MAX_MESSAGE_CHARS:,} characters.")

if st.sidebar.button("New chat", type="primary", width="stretch") or "chat" not in st.session_state:
    st.session_state.chat = []
    st.session_state["chat-removed"] = 0
    st.session_state.pop("chat-dropped-said", None)


def attention_chart(reply: dict) -> dict:
    rows = [{"reply token": f"{i:02d} {r}", "context token": f"{j:03d} {c}", "weight": w}
            for i, (r, row) in enumerate(zip(reply["reply_tokens"], reply["attention"]))
            for j, (c, w) in enumerate(zip(reply["context_tokens"], row))]
    return charts.heatmap(rows, "context token", "reply token", "weight",
                          "context (what the model read)", "reply (what it wrote)")


SOURCE_NAMES = {"chitchat": "Chit-Chat", "cornell": "Cornell Movie-Dialogs"}


def source_of(c: dict) -> str:
    """Where a reply or candidate came from, in words."""
    if c.get("source") == "plain":
        return ("no reply from the training dialogues fit this message well enough, so the chat says so plainly "
                "(the candidates are below)")
    if c.get("source") == "retrieved":
        return f"a reply from the {SOURCE_NAMES.get(c.get('corpus', ''), c.get('corpus', ''))} training dialogues"
    return "written by the model"


def candidates_table(message: dict):
    """The candidates with their scores and sources, the shown reply first."""
    columns = {"match": "BM25 match of its context", "similarity": "its context's meaning vs. your message",
               "loglik": "mean log p(reply | context)",
               "head": "next-reply head", "prior": "mean log p(reply)", "overlap": "overlap with the conversation"}
    rows = [{"reply": c["text"], "source": source_of(c), "score": round(c["score"], 3),
             **{label: round(c[k], 3) for k, label in columns.items() if c.get(k) is not None}}
            for c in message["candidates"]]
    with st.expander(f"Candidates ({len(rows)}, best first)"):
        charts.show_table(rows)
        if ck.ranker is not None:
            st.caption("Candidates: replies people gave in the training dialogues to the contexts most like your "
                       "message (BM25 match; the best is shown only when the model reads its context as meaning "
                       f"what your message means, a cosine of at least {MIN_SIMILARITY}), or the replies "
                       "the model sampled. score = the model's ranker, trained to pick the reply a conversation "
                       "actually got among the replies to similar ones (how likely the model finds it, how well "
                       "its words match the conversation's, how repetitive it is).")
        else:
            st.caption("score = the ranking the model was tuned to on validation data: its next-reply head, "
                       "plus the reply's likelihood given the conversation minus a share of its likelihood "
                       "without it, plus how many of the conversation's less common words the reply shares.")


def details(message: dict):
    if message.get("candidates"):
        candidates_table(message)
    if message.get("attention"):
        with st.expander("Attention map"):
            charts.show(attention_chart(message))


def show(message: dict):
    with st.chat_message(message["role"]):
        show_plain(st, message["content"])
        if message.get("source_line"):
            st.caption(message["source_line"])
        for note in message.get("notes", []):
            st.caption(note)
        details(message)


INDEX_WAIT_S = 2.0  # how long a reply waits for an index still loading, before answering without it
INDEX_NOTES = {
    "loading": "The index of training replies is still loading: this reply was chosen among the model's own.",
    "missing": "This chat checkpoint has no index of training replies, so replies are the model's own. Build it "
               "with: python -m nlp index --checkpoint checkpoints/chat",
    "damaged": "The index of training replies cannot be used ({error}); replies are the model's own meanwhile.",
}


def respond() -> None:
    """Reply to the last message of the chat (a user's), streaming it in, and add the reply to the chat.

    The reply goes into the chat as soon as its first text is shown, and grows there: a message sent while it is
    still streaming, or while its candidates and attention are being added, reruns this script and ends this
    run, and the reply the person saw stays as they saw it (a cut-off one says so) instead of being written
    again."""
    chat = st.session_state.chat
    streamed = cfg.strategy == "sample" and cfg.num_candidates == 1  # token by token; otherwise whole at once
    message = {"role": "assistant", "content": "", "notes": [], "pending": True, "streamed": streamed}
    with st.chat_message("assistant"):
        try:
            source = "generated" if generated_only else DEFAULT_SOURCE
            if not generated_only:
                loader.done.wait(INDEX_WAIT_S)  # it loads in well under a second after the model
            reply = chat_reply(ck, [m["content"] for m in chat], cfg, make_generator(seed), source=source,
                               index=loader.index)
            # Streamed by hand, as st.write_stream does it: that checks whether its argument is a dataframe first,
            # and the check imports pandas (0.4 s), which the process's first reply would wait for
            shown, added = st.empty(), False
            for piece in reply.stream:
                if not added:
                    chat.append(message)
                    added = True
                message["content"] += piece
                show_plain(shown, message["content"])
            FIRST_REPLY.set()
        except GenerationError as e:
            if chat and chat[-1] is message:
                chat.pop()
            chat.pop()  # the message gets no reply: take it back, so the chat still alternates
            st.error(str(e))
            st.stop()
        source_line = ""
        if cfg.strategy == "sample" and cfg.num_candidates > 1:
            said = source_of({"source": reply.source, "corpus": reply.corpus})
            source_line = said[:1].upper() + said[1:] + "."  # the corpus's name keeps its capitals
            st.caption(source_line)
        notes = []
        if not generated_only and loader.status() != "ready":
            notes.append(INDEX_NOTES[loader.status()].format(error=loader.error))
        if reply.turns_dropped and not st.session_state.get("chat-dropped-said"):
            notes.append(f"From here on the model sees only the last {reply.turns_used} turns of the "
                         "conversation (the length it was trained on); older turns are not sent.")
            st.session_state["chat-dropped-said"] = True
        if reply.tokens_dropped:
            notes.append(f"The model read {len(reply.context_tokens)} tokens, its input's limit: the first "
                         f"{reply.tokens_dropped} token(s) of the last {reply.turns_used} turn(s) were left out.")
        if not reply.text.strip():
            notes.append("The model produced an empty reply; try sampling or a higher temperature.")
        if cfg.strategy == "beam":
            notes.append("Beam search writes one reply, so there are no candidates to show; its attention map "
                         "is drawn for replies written token by token (sampling).")
        for note in notes:
            st.caption(note)
        message.update({"notes": notes, "source_line": source_line, "context_tokens": reply.context_tokens,
                        "reply_tokens": reply.reply_tokens, "attention": reply.attention,
                        "candidates": reply.candidates})
        if chat[-1] is not message:  # an empty reply streams no piece
            chat.append(message)
        del message["pending"]
        details(message)
    if len(chat) > MAX_CHAT_MESSAGES:  # whole exchanges leave from the top, so the chat still starts with the user
        extra = len(chat) - MAX_CHAT_MESSAGES
        extra += extra % 2
        del chat[:extra]
        st.session_state["chat-removed"] = st.session_state.get("chat-removed", 0) + extra
        st.rerun()  # show the shortened chat and say why


def settle_cut_off(chat: list[dict]) -> None:
    """A reply whose run was ended by the next message: kept as it was shown, said to be cut off when the
    stream had not finished (a ranked reply's text is whole once shown; only its details were left)."""
    last = chat[-1] if chat else None
    if last is not None and last.pop("pending", False) and last.get("streamed"):
        last["notes"] = [*last.get("notes", []), "Cut off: a new message came before this reply was finished."]


if st.session_state.get("chat-removed"):
    st.caption(f"The {st.session_state['chat-removed']} oldest messages were removed from this page (it keeps the "
               f"last {MAX_CHAT_MESSAGES}); the model only ever reads the last {turns} turns.")
settle_cut_off(st.session_state.chat)
for message in st.session_state.chat:
    show(message)

# A message sent while the previous reply was still streaming reruns this script and cuts that reply off:
# the unanswered message is answered first, so the chat always alternates and the model never sees two user
# turns in a row.
if st.session_state.chat and st.session_state.chat[-1]["role"] == "user":
    respond()

settings_notice("chat", ck, cfg)

# A message over the limit is kept here to shorten (the chat box empties itself when it sends)
draft = None
if "chat-draft-text" in st.session_state:
    st.session_state["chat-draft"] = st.session_state.pop("chat-draft-text")
if "chat-draft" in st.session_state:
    with st.container(border=True):
        st.warning(f"Your message has {len(st.session_state['chat-draft']):,} characters; the limit is "
                   f"{MAX_MESSAGE_CHARS:,}. Shorten it here and send it again.")
        edited = st.text_area("Your message", key="chat-draft", height=150)
        c1, c2 = st.columns(2)
        if c1.button("Send", key="chat-draft-send", type="primary"):
            draft = edited
        if c2.button("Discard", key="chat-draft-discard"):
            del st.session_state["chat-draft"]
            st.rerun()

if prompt is None:
    prompt = draft
if prompt is not None:
    text, removed = strip_control(prompt)
    if not text.strip():
        st.warning("The message is empty: type something to get a reply.")
    elif len(text) > MAX_MESSAGE_CHARS:
        st.session_state["chat-draft-text"] = text  # shown for editing on the rerun
        st.rerun()
    else:
        st.session_state.pop("chat-draft", None)
        user = {"role": "user", "content": text}
        if removed:
            user["notes"] = [f"{removed} control character(s) were removed from the message."]
        st.session_state.chat.append(user)
        show(user)
        respond()
        if draft is not None:
            st.rerun()  # the draft box goes
