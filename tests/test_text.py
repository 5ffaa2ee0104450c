"""Normaliser and tokenizer round trips."""

from __future__ import annotations

import pytest

from dyncli.data.text import (
    CharTokenizer,
    SentencePieceTokenizer,
    normalize_text,
    tokenizer_from_state,
)
from dyncli.errors import InputError
from dyncli.metrics import error_rates

TEXTS = ["one two three", "four five six seven", "eight nine zero", "two two one"] * 20


def test_normalize() -> None:
    assert normalize_text("  Hello,  WORLD!  It's ok. ") == "hello world it's ok"


def test_char_round_trip_and_state() -> None:
    tok = CharTokenizer.train(TEXTS)
    ids = tok.encode("Nine, ONE!")
    assert 0 not in ids  # 0 is the blank
    assert tok.decode(ids) == "nine one"
    again = tokenizer_from_state(tok.to_state())
    assert again.encode("nine one") == ids and again.vocab_size == tok.vocab_size
    with pytest.raises(InputError, match="does not know"):
        tok.encode("qq")


def test_sentencepiece_round_trip_and_state() -> None:
    tok = SentencePieceTokenizer.train(TEXTS, vocab_size=24)
    ids = tok.encode("seven eight nine")
    assert ids and 0 not in ids
    assert tok.decode(ids) == "seven eight nine"
    again = tokenizer_from_state(tok.to_state())
    assert again.encode("seven eight nine") == ids
    assert again.decode([0, *ids, 0]) == "seven eight nine"  # blanks are ignored


def test_error_rates_use_the_shared_normaliser() -> None:
    rates = error_rates(["One two."], ["one TWO"])
    assert rates.wer == 0.0 and rates.cer == 0.0
    rates = error_rates(["one two three four"], ["one three four five six"])
    assert rates.words == 4 and rates.word_errors == 3
    assert rates.wer == pytest.approx(0.75)
