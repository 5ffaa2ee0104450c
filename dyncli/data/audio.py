"""Audio reading: soundfile for I/O, torchaudio for resampling.

Every function returns mono float32 waveforms in [-1, 1] at the requested sample rate.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from dyncli.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("dyncli")
_warned_stereo = False
MIN_RATE = 1000  # Hz; telephone speech is 8000, its band reaches 3400 Hz


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
    audio holding NaN or infinite samples, and a sample rate below
    :data:`MIN_RATE` (no speech fits; the header is likely damaged).
    """
    import soundfile as sf
    import torch

    p = Path(path)
    if not p.is_file():
        if p.is_dir():
            raise InputError(f"{p}: a directory, not an audio file")
        if p.exists():  # a FIFO or device would block or never end: never read
            raise InputError(f"{p}: not a regular file, so not read as audio")
        raise InputError(f"{p}: audio file not found")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{p}: unreadable audio ({_short(exc)})") from None
    if data.shape[0] == 0:
        raise InputError(f"{p}: audio is empty (zero samples)")
    if rate < MIN_RATE:  # upsampled, it would be transcribed as if it were speech
        raise InputError(
            f"{p}: sample rate {rate} Hz is below {MIN_RATE} Hz: no speech fits (a damaged header?)"
        )
    wave = torch.from_numpy(data.T.copy())  # (C, N)
    if not bool(torch.isfinite(wave).all()):  # float WAVs can; the model would emit nothing
        raise InputError(f"{p}: audio holds NaN/inf samples")
    if wave.shape[0] > 1:
        _warn_stereo(p, wave.shape[0])
        wave = wave.mean(dim=0, keepdim=True)
    return resample(wave[0], int(rate), sample_rate)


# torchaudio's polyphase kernel has (new/g) x (orig/g) taps (g = gcd of the rates): a few
# hundred thousand for the usual rates (44100 -> 16000: 160 x 441), but gigabytes for a rate
# prime to the target (99991 Hz -> 16000 Hz took 14 GB and 90 s for one second of audio).
_MAX_KERNEL = 4_000_000


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a (..., N) waveform with torchaudio's band-limited sinc interpolation, or, for
    a rate pair whose polyphase kernel would be huge, by zero-padding or truncating its
    spectrum (exact ratio, memory linear in the length)."""
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    if (orig_rate // g) * (new_rate // g) > _MAX_KERNEL:
        return _fft_resample(wave, orig_rate, new_rate)
    import torchaudio.functional as AF

    return AF.resample(wave, orig_rate, new_rate)


def _fft_resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling in the frequency domain (what ``scipy.signal.resample`` does)."""
    import torch

    n = wave.shape[-1]
    m = max(1, math.ceil(n * new_rate / orig_rate))
    spec = torch.fft.rfft(wave.double(), dim=-1)
    out = spec.new_zeros((*spec.shape[:-1], m // 2 + 1))
    keep = min(spec.shape[-1], out.shape[-1])
    out[..., :keep] = spec[..., :keep]
    return (torch.fft.irfft(out, n=m, dim=-1) * (m / n)).to(wave.dtype)


def _warn_stereo(path: Path, channels: int) -> None:
    global _warned_stereo
    if not _warned_stereo:
        log.warning("%s has %d channels: downmixed to mono (averaged)", path, channels)
        _warned_stereo = True
    else:
        log.debug("%s has %d channels: downmixed to mono", path, channels)


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
