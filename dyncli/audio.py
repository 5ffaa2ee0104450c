"""Audio reading: soundfile for I/O, torchaudio for resampling.

Every function returns mono float32 waveforms in [-1, 1] at the requested sample rate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dyncli.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("dyncli")
_warned_stereo = False


def audio_duration(path: str | Path) -> float:
    """Duration in seconds, read from the file header only."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: unreadable audio ({_short(exc)})") from None
    return float(info.frames) / float(info.samplerate) if info.samplerate else 0.0


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Read ``path`` as a mono 1-D float32 tensor at ``sample_rate`` Hz.

    Multi-channel audio is averaged to mono (with a warning); any other rate is resampled.
    Raises :class:`InputError` naming the file for missing, unreadable or empty audio, and for
    audio holding NaN or infinite samples.
    """
    import soundfile as sf
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: audio file not found")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{p}: unreadable audio ({_short(exc)})") from None
    if data.shape[0] == 0:
        raise InputError(f"{p}: audio is empty (zero samples)")
    wave = torch.from_numpy(data.T.copy())  # (C, N)
    if not bool(torch.isfinite(wave).all()):  # float WAVs can; the model would emit nothing
        raise InputError(f"{p}: audio holds NaN/inf samples")
    if wave.shape[0] > 1:
        _warn_stereo(p, wave.shape[0])
        wave = wave.mean(dim=0, keepdim=True)
    return resample(wave[0], int(rate), sample_rate)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a (..., N) waveform with torchaudio's band-limited sinc interpolation."""
    if orig_rate == new_rate:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, orig_rate, new_rate)


def _warn_stereo(path: Path, channels: int) -> None:
    global _warned_stereo
    if not _warned_stereo:
        log.warning("%s has %d channels: downmixed to mono (averaged)", path, channels)
        _warned_stereo = True
    else:
        log.debug("%s has %d channels: downmixed to mono", path, channels)


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
