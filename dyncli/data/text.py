"""Text normalisation and tokenizers.

One normaliser (:func:`normalize_text`) is shared by training targets and WER scoring, so a
model is never scored against text it was not trained to produce. Tokenizers map normalised
text to CTC label ids; dyncli's own (char, sentencepiece) put the CTC blank at id 0, an imported
vocabulary (:class:`VocabTokenizer`) says where its blank is (``blank_id``). A tokenizer
serialises to a small dict of plain types (``to_state``) that travels inside the checkpoint.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from dyncli.errors import InputError, UsageError

BLANK_ID = 0
_DROP = re.compile(r"[^\w' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, drop punctuation except apostrophes, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower().replace("_", " ")
    text = _DROP.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int:
        """Number of CTC output classes, blank included."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_state(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Characters of the normalised text; the space is a label of its own."""

    kind = "char"

    def __init__(self, symbols: Sequence[str]) -> None:
        if len(set(symbols)) != len(symbols) or any(len(s) != 1 for s in symbols):
            raise UsageError("character tokenizer symbols must be distinct single characters")
        self.symbols = list(symbols)
        self._index = {s: i + 1 for i, s in enumerate(self.symbols)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars = sorted({c for t in texts for c in normalize_text(t)})
        if not chars:
            raise InputError("cannot build a character tokenizer: the transcripts are empty")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols) + 1

    def encode(self, text: str) -> list[int]:
        norm = normalize_text(text)
        unknown = sorted({c for c in norm if c not in self._index})
        if unknown:
            raise InputError(
                f"text {text!r} has characters the tokenizer does not know: {''.join(unknown)!r}"
            )
        return [self._index[c] for c in norm]

    def decode(self, ids: Sequence[int]) -> str:
        out = "".join(self.symbols[i - 1] for i in ids if 0 < i <= len(self.symbols))
        return _SPACES.sub(" ", out).strip()

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "symbols": "".join(self.symbols)}


class SentencePieceTokenizer:
    """A sentencepiece model; its serialised proto travels in the checkpoint."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError variants
            raise InputError(f"the sentencepiece model is corrupt: {exc}") from None

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 32, model_type: str = "unigram"
    ) -> SentencePieceTokenizer:
        import io

        import sentencepiece as spm

        sentences = [normalize_text(t) for t in texts]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise InputError("cannot train a sentencepiece model: the transcripts are empty")
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=buf,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                bos_id=-1,
                eos_id=-1,
                unk_id=0,
                hard_vocab_limit=False,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise UsageError(f"sentencepiece training failed: {exc}") from None
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize()) + 1

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.EncodeAsIds(normalize_text(text))]

    def decode(self, ids: Sequence[int]) -> str:
        pieces = [i - 1 for i in ids if 0 < i < self.vocab_size]
        return _SPACES.sub(" ", str(self._sp.DecodeIds(pieces))).strip()

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_proto": self.model_proto}


class VocabTokenizer:
    """A model's own character vocabulary (a wav2vec2-style ``vocab.json``): one token per id,
    a word delimiter token (``|``) for the space, the CTC blank at ``blank_id`` (wav2vec2's
    ``<pad>``). Decoding matches ``Wav2Vec2CTCTokenizer`` on a greedy path whose repeats are
    merged: blanks dropped, the delimiter read as a space, the rest joined and stripped (lower-
    cased when the vocabulary says so)."""

    kind = "vocab"

    def __init__(
        self,
        tokens: Sequence[str],
        blank_id: int,
        word_delimiter: str = "|",
        unk: str | None = None,
        lower: bool = False,
    ) -> None:
        if len(set(tokens)) != len(tokens):
            raise InputError("the vocabulary lists a token twice")
        if not 0 <= blank_id < len(tokens):
            raise InputError(f"blank id {blank_id} outside the vocabulary of {len(tokens)}")
        self.tokens = list(tokens)
        self.blank_id = blank_id
        self.word_delimiter = word_delimiter
        self.unk = unk
        self.lower = lower
        self._index = {t: i for i, t in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        norm = normalize_text(text)
        if not self.lower and not any(t.islower() for t in self.tokens if len(t) == 1):
            norm = norm.upper()  # an upper-case vocabulary (wav2vec2's English models)
        out = []
        for c in norm:
            token = self.word_delimiter if c == " " else c
            if token in self._index:
                out.append(self._index[token])
            elif self.unk is not None and self.unk in self._index:
                out.append(self._index[self.unk])
            else:
                raise InputError(f"text {text!r} has a character the vocabulary lacks: {c!r}")
        return out

    def decode(self, ids: Sequence[int]) -> str:
        chars = [
            " " if self.tokens[i] == self.word_delimiter else self.tokens[i]
            for i in ids
            if i != self.blank_id and 0 <= i < len(self.tokens)
        ]
        text = "".join(chars).strip()
        return text.lower() if self.lower else text

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tokens": list(self.tokens),
            "blank_id": self.blank_id,
            "word_delimiter": self.word_delimiter,
            "unk": self.unk,
            "lower": self.lower,
        }


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    kind = state.get("kind")
    if kind == "vocab":
        return VocabTokenizer(
            list(state["tokens"]),
            int(state["blank_id"]),
            str(state.get("word_delimiter", "|")),
            state.get("unk"),
            bool(state.get("lower", False)),
        )
    if kind == "char":
        return CharTokenizer(list(state["symbols"]))
    if kind == "sentencepiece":
        return SentencePieceTokenizer(state["model_proto"])
    raise InputError(f"unknown tokenizer kind {kind!r} in checkpoint")


def build_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 32) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size=vocab_size)
    raise UsageError(f"unknown tokenizer {kind!r}; choose 'char' or 'sentencepiece'")
