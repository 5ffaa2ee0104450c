"""Text normalisation and tokenizers.

One normaliser (:func:`normalize_text`) is shared by training targets and WER scoring, so a
model is never scored against text it was not trained to produce. Tokenizers map normalised
text to CTC label ids; id 0 is always the CTC blank. A tokenizer serialises to a small dict of
plain types (``to_state``) that travels inside the checkpoint.
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


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    kind = state.get("kind")
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
