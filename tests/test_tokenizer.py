import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlp.tokenizer import BOS, EOS, PAD, SEP, Tokenizer, TokenizerError, train_tokenizer


def test_fixed_special_ids(tokenizer):
    assert [tokenizer.piece(i) for i in (PAD, BOS, EOS, SEP)] == ["<pad>", "<s>", "</s>", "<sep>"]
    assert tokenizer.vocab_size == 600


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_decode_inverts_encode_for_any_unicode(tokenizer, text):
    # identity normaliser + byte fallback: nothing is ever unknown or changed, except SentencePiece's own
    # whitespace symbol U+2581, which reads back as the space it stands for
    assert tokenizer.decode(tokenizer.encode(text)) == text.replace("\u2581", " ")


def test_the_whitespace_symbol_reads_as_a_space(tokenizer):
    assert tokenizer.decode(tokenizer.encode("a\u2581b")) == "a b"


def test_unseen_characters_become_bytes_not_unk(tokenizer):
    ids = tokenizer.encode("Ω🙂漢")
    assert 1 not in ids  # <unk_sp>
    assert tokenizer.decode(ids) == "Ω🙂漢"


def test_typed_separator_is_text_not_a_control_symbol(tokenizer):
    ids = tokenizer.encode("a <sep> b")
    assert SEP not in ids
    assert tokenizer.decode(ids) == "a <sep> b"


def test_wikitext_unk_marker_is_one_token(tokenizer):
    assert tokenizer.encode("<unk>") [-1] == 5
    assert tokenizer.decode(tokenizer.encode("the <unk> whale")) == "the <unk> whale"


def test_encode_turns_joins_with_sep_and_keeps_the_newest(tokenizer):
    ids = tokenizer.encode_turns(["hello there", "how are you"], max_len=1000)
    assert ids.count(SEP) == 1
    short = tokenizer.encode_turns(["hello there", "how are you"], max_len=4)
    assert short == ids[-4:]


def test_garbage_model_is_a_clear_error():
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        Tokenizer(b"not a model")


def test_too_small_vocabulary_is_a_clear_error():
    with pytest.raises(TokenizerError, match="Vocabulary size"):
        train_tokenizer(["some text here"] * 10, vocab_size=50)


def test_pieces_are_readable_and_aligned_with_the_ids(tokenizer):
    ids = tokenizer.encode("ok 🙂 <b>")
    pieces = tokenizer.pieces(ids)
    assert len(pieces) == len(ids)
    # byte runs decode to their character, the rest of the run is ""; words start with a space (SentencePiece's ▁)
    assert "".join(pieces) == " ok 🙂 <b>"
    assert not any(p.startswith("<0x") for p in pieces)


def test_a_byte_token_that_is_no_whole_character_never_shows_as_a_replacement_mark(tokenizer):
    """A sampled model can emit the first byte of a 3-byte character and then something else: the text drops it
    (no U+FFFD on screen) and the token list names the byte."""
    byte = tokenizer.sp.piece_to_id("<0xE2>")
    a = tokenizer.encode("a")
    assert tokenizer.decode(a + [byte] + a) == tokenizer.decode(a + a)
    assert tokenizer.pieces(a + [byte] + a)[1] == "<0xE2>"
    assert tokenizer.decode(tokenizer.encode("naïve ☕")) == "naïve ☕"  # whole characters are untouched


def test_detokenize_wikitext_reads_as_prose():
    from nlp.tokenizer import detokenize_wikitext

    raw = (' The city , founded in 1850 , is 3 @,@ 000 km long and well @-@ known for its " old " town '
           "( the centre ) .\n = History = \n It did n't grow until 1 @.@ 5 million people 's homes were built .")
    assert detokenize_wikitext(raw) == ('The city, founded in 1850, is 3,000 km long and well-known for its "old" '
                                        "town (the centre).\n= History =\nIt didn't grow until 1.5 million people's "
                                        "homes were built.")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["the", " the", " city", " ,", " @-@", " @,@", " 000", ' "', " (", " )", " .", "\n",
                                 " n't", " 's", " did", "s", "\n\n", " <unk>"]), max_size=30),
       st.sampled_from(["", "The history of", "In 1998 , the"]))
def test_readable_stream_joins_to_the_readable_whole(pieces, prompt):
    from nlp.serve import readable_stream
    from nlp.tokenizer import detokenize_wikitext

    assert "".join(readable_stream(iter(pieces), prompt)) == detokenize_wikitext(prompt + "".join(pieces))
