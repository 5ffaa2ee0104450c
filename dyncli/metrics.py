"""WER and CER with jiwer, on text normalised by :func:`dyncli.data.text.normalize_text`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dyncli.data.text import normalize_text


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level error rates as fractions (0.05 = 5%), with the counts behind them."""

    wer: float
    cer: float
    words: int
    word_errors: int
    chars: int
    char_errors: int


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRates:
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = words.hits + words.substitutions + words.deletions
    n_chars = chars.hits + chars.substitutions + chars.deletions
    w_err = words.substitutions + words.deletions + words.insertions
    c_err = chars.substitutions + chars.deletions + chars.insertions
    return ErrorRates(
        wer=w_err / max(n_words, 1),
        cer=c_err / max(n_chars, 1),
        words=n_words,
        word_errors=w_err,
        chars=n_chars,
        char_errors=c_err,
    )


def utterance_word_errors(
    references: Sequence[str], hypotheses: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Word errors (substitutions + deletions + insertions) and reference words per utterance,
    on the same normalised text and alignment as :func:`error_rates` (their sums equal its
    ``word_errors`` and ``words``). The input of a paired bootstrap over utterances."""
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    out = jiwer.process_words(refs, hyps)
    errors: list[int] = []
    for chunks in out.alignments:
        count = 0
        for c in chunks:
            if c.type in ("substitute", "delete"):
                count += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                count += c.hyp_end_idx - c.hyp_start_idx
        errors.append(count)
    return errors, [len(r.split()) for r in refs]
