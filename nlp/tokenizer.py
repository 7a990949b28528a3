"""One SentencePiece tokenizer for every model: train, load, encode, decode.

Fixed ids: 0 <pad>, 1 <unk_sp> (never produced: byte fallback), 2 <s> (bos), 3 </s> (eos), 4 <sep> (between
dialogue turns; a control symbol, so a user who types "<sep>" gets characters, not a separator), 5 <unk> as
it appears literally in WikiText ("<unk>" in the text stays one symbol instead of five characters).
Byte fallback: a character the vocabulary lacks becomes its UTF-8 bytes, so no input is ever unknown.
The normaliser is the identity and whitespace is kept, so decode(encode(text)) == text.

    python -m nlp tokenizer train --corpus wikitext2 --corpus chitchat --vocab-size 8000 --out tok.model
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from nlp.errors import TokenizerError

PAD, UNK, BOS, EOS, SEP = 0, 1, 2, 3, 4
SEP_PIECE = "<sep>"
LITERAL_UNK = "<unk>"  # WikiText's own marker for rare words, kept as one ordinary symbol


_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*$")


class Tokenizer:
    """A loaded SentencePiece model with this project's fixed special ids."""

    def __init__(self, model_bytes: bytes):
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except Exception as e:
            raise TokenizerError(f"not a SentencePiece model ({e})") from None
        self.model_bytes = model_bytes
        if self.sp.piece_to_id(SEP_PIECE) != SEP or self.sp.pad_id() != PAD or self.sp.eos_id() != EOS:
            raise TokenizerError("this SentencePiece model lacks the project's fixed special ids")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise TokenizerError(f"cannot read tokenizer {path}: {e.strerror}") from None
        return cls(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_bytes)

    @functools.cached_property
    def sentence_ends(self) -> frozenset[int]:
        """The ids of pieces that end a sentence: ending in . ! ? or an ellipsis, perhaps then a closing quote or
        bracket ("!!", " ...", '."')."""
        return frozenset(i for i in range(self.vocab_size)
                         if not self.sp.is_control(i) and not self.sp.is_byte(i)
                         and _SENTENCE_END.search(self.sp.id_to_piece(i)))

    @functools.cached_property
    def piece_information(self) -> list[float]:
        """Each piece's information, -log p(piece) under the SentencePiece unigram model (its stored score):
        rare pieces carry more. 0 for special and byte pieces, and for every piece of a model of another type
        (a BPE model stores merge ranks, no probabilities)."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(self.model_bytes)
        if proto.trainer_spec.model_type != pb.TrainerSpec.UNIGRAM:
            return [0.0] * self.vocab_size
        return [0.0 if self.sp.is_control(i) or self.sp.is_byte(i) or self.sp.is_unknown(i)
                else max(0.0, -self.sp.get_score(i)) for i in range(self.vocab_size)]

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids. Special ids are dropped (bos/eos/pad/sep mark structure, not characters), and so
        are byte-fallback tokens that do not make a whole UTF-8 character (a sampled model can emit those):
        no U+FFFD replacement character that the model made up ever reaches a reader."""
        return self.sp.decode(self._whole_characters([int(i) for i in ids if int(i) > SEP]))

    def _byte(self, i: int) -> int | None:
        """The byte a byte-fallback token stands for ("<0xE2>" -> 0xE2), or None for any other token."""
        return int(self.sp.id_to_piece(i)[3:5], 16) if self.sp.is_byte(i) else None

    def _whole_characters(self, ids: list[int]) -> list[int]:
        """The ids without the byte-fallback tokens that do not complete a UTF-8 character (a text's own
        U+FFFD, three whole bytes, stays)."""
        out: list[int] = []
        p = 0
        while p < len(ids):
            raw: list[int] = []  # the bytes of the run of byte-fallback tokens from p on
            while p + len(raw) < len(ids) and (b := self._byte(ids[p + len(raw)])) is not None:
                raw.append(b)
            if not raw:
                out.append(ids[p])
                p += 1
                continue
            q = 0
            while q < len(raw):
                lead = raw[q]
                size = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else \
                    4 if lead >> 3 == 0b11110 else 0
                try:
                    if size and q + size <= len(raw):
                        bytes(raw[q:q + size]).decode("utf-8")
                        out.extend(ids[p + q:p + q + size])
                        q += size
                        continue
                except UnicodeDecodeError:
                    pass
                q += 1  # a stray byte: dropped
            p += len(raw)
        return out

    @property
    def literal_unk_id(self) -> int | None:
        """The id of WikiText's literal `<unk>` symbol, or None for a tokenizer without it."""
        i = self.sp.piece_to_id(LITERAL_UNK)
        return i if self.sp.id_to_piece(i) == LITERAL_UNK else None

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One human-readable string per token, e.g. for attention maps.

        Byte-fallback tokens (<0xE2> ...) are decoded together: the first token of a run shows the
        character(s) they make, the rest show "" so the list stays aligned with the ids.
        """
        out: list[str] = []
        run: list[int] = []

        def flush():
            if run:
                try:
                    out[len(out) - len(run)] = bytes(run).decode("utf-8")
                except UnicodeDecodeError:  # not a whole character: show the byte tokens as they are
                    out[len(out) - len(run):] = [f"<0x{b:02X}>" for b in run]
                run.clear()

        for i in map(int, ids):
            if (b := self._byte(i)) is not None:
                run.append(b)
                out.append("")
            else:
                flush()
                out.append(self.sp.id_to_piece(i).replace("\u2581", " "))
        flush()
        return out

    def encode_turns(self, turns: list[str], max_len: int) -> list[int]:
        """Dialogue context: turns joined by <sep>, oldest first, trimmed from the oldest end to max_len."""
        return join_turns(self.encode_batch(list(turns)), max_len)


@functools.cache
def _moses_detokenizer():
    # sacremoses, not nltk's Treebank detokenizer: `import nltk` loads scipy and scikit-learn too (+93 MB and
    # 2 s in the app's server, on the first Generate); sacremoses costs 6 MB
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer("en")


def detokenize_wikitext(text: str) -> str:
    """WikiText's tokenized text as ordinary prose, line by line: `@-@`, `@,@` and `@.@` join their neighbours
    ("3 @,@ 000" -> "3,000"), and the Moses detokenizer closes the spaces around punctuation, quotes and
    contractions ("did n't", "it 's", "( the city )", "1850 ,", '" old "'). Nothing is unescaped: "&amp;" stays."""
    detok = _moses_detokenizer()
    lines = []
    for line in text.split("\n"):
        for mark, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" n't", "n't")):  # n't: PTB's split
            line = line.replace(mark, joined)
        lines.append(detok.detokenize(line.split(), unescape=False))
    return "\n".join(lines)


def join_turns(turn_ids: list[list[int]], max_len: int) -> list[int]:
    ids: list[int] = []
    for k, turn in enumerate(turn_ids):
        if k:
            ids.append(SEP)
        ids.extend(turn)
    return ids[-max_len:] if max_len > 0 else ids


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, input_sentence_size: int = 2_000_000,
                    model_type: str = "unigram", seed: int = 0) -> Tokenizer:
    """Train on an iterable of sentences; big corpora are sampled down to input_sentence_size."""

    def lines() -> Iterator[str]:
        for t in texts:
            t = t.strip("\n")
            if t.strip():
                yield t

    import io

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, unk_piece="<unk_sp>",
            control_symbols=[SEP_PIECE], user_defined_symbols=[LITERAL_UNK], byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            character_coverage=0.9995, input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=16384, hard_vocab_limit=False, num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    return Tokenizer(buf.getvalue())


# --------------------------------------------------------------------------- generated ids as text
def decode_text(tokenizer: Tokenizer, ids: list[int], prompt_ids: list[int] = ()) -> str:
    """Text of `ids` as it continues `prompt_ids` (so a leading space survives); EOS reads as a newline."""
    def text(seq: list[int]) -> str:
        parts, cur = [], []
        for i in seq:
            if i == EOS:
                parts.append(tokenizer.decode(cur))
                cur = []
            else:
                cur.append(i)
        return "\n".join(parts + [tokenizer.decode(cur)])

    if not prompt_ids:
        return text(list(ids))
    head = text(list(prompt_ids))
    full = text(list(prompt_ids) + list(ids))
    return full[len(head):] if full.startswith(head) else full


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int], prompt_ids: list[int] = ()) -> Iterator[str]:
    """Text pieces as tokens arrive; joined they equal `decode_text` of all the tokens.

    A piece is held back while the text ends in an incomplete UTF-8 sequence (byte-fallback tokens decode
    to U+FFFD until the character's last byte arrives).
    """
    ids: list[int] = []
    emitted = ""
    for tok in tokens:
        ids.append(tok)
        text = decode_text(tokenizer, ids, prompt_ids)
        safe = text.rstrip("\ufffd")
        if safe.startswith(emitted) and len(safe) > len(emitted):
            yield safe[len(emitted):]
            emitted = safe
    final = decode_text(tokenizer, ids, prompt_ids)
    if final.startswith(emitted) and len(final) > len(emitted):
        yield final[len(emitted):]
