"""In-memory utterance sets and length-bucketed batching."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dyncli.data.audio import load_audio
from dyncli.data.manifest import Manifest
from dyncli.errors import InputError


@dataclass
class Utterance:
    wave: torch.Tensor  # (N,) float32 at the model's rate
    text: str
    origin: str

    @property
    def samples(self) -> int:
        return int(self.wave.shape[0])


def load_utterances(
    manifest: Manifest,
    sample_rate: int,
    skip_bad: bool = False,
    on_item: Callable[[], None] | None = None,
) -> tuple[list[Utterance], list[str]]:
    """Read every item's audio. Returns the utterances and the messages for skipped items.

    Audio whose length differs from the manifest's ``duration`` by more than 10% (and 0.1 s) is
    said on stderr: a truncated file or a header lying about its length reads as a short clip
    that would be scored without a word."""
    out: list[Utterance] = []
    skipped = list(manifest.skipped)
    mismatched: list[str] = []
    for item in manifest.items:
        try:
            wave = load_audio(item.audio, sample_rate)
        except InputError as exc:
            if not skip_bad:
                raise InputError(f"{item.origin}: {exc} (use --skip-bad to skip it)") from None
            skipped.append(f"{item.origin}: {exc}")
            continue
        finally:
            if on_item is not None:
                on_item()
        seconds = wave.shape[0] / sample_rate
        if item.duration is not None and abs(seconds - item.duration) > max(
            0.1, 0.1 * item.duration
        ):
            mismatched.append(
                f"{item.origin}: {item.audio} holds {seconds:.3g} s of audio, the manifest says "
                f"duration {item.duration:g} s (truncated file or wrong header?)"
            )
        out.append(Utterance(wave=wave, text=item.text, origin=item.origin))
    if not out:  # --skip-bad left nothing: say why, or the reasons are never shown
        first = f"; the first: {skipped[0]}" if skipped else ""
        raise InputError(
            f"{manifest.path}: no utterance could be read ({len(skipped)} skipped{first})"
        )
    _warn_lengths(mismatched)
    return out, skipped


def _warn_lengths(messages: list[str], show: int = 5) -> None:
    import logging

    log = logging.getLogger("dyncli")
    for message in messages[:show]:
        log.warning("%s", message)
    if len(messages) > show:
        log.warning(
            "... and %d more utterances whose length differs from the manifest's duration",
            len(messages) - show,
        )


def pad_waves(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D waveforms into (B, N_max) with zero padding, plus (B,) lengths in samples."""
    lengths = torch.tensor([int(w.shape[0]) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0)
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
    return batch, lengths
