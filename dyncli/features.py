"""Log-mel front end and training-time augmentation.

The front end is deliberately cheap (a 40-band log-mel at 10 ms hop) so that the encoder, the
part dynamic depth can skip, dominates the cost. Frames are computed with ``center=False`` and
normalised over each utterance's true frames only, so a padded batch gives exactly the features
each utterance gets alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
import torchaudio.functional as AF

from dyncli.models.config import FrontendConfig


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True on padding."""
    t = int(lengths.max()) if max_len is None else max_len
    return torch.arange(t, device=lengths.device)[None, :] >= lengths[:, None]


class LogMelFrontend(torch.nn.Module):
    """Waveform (B, N) in [-1, 1] -> normalised log-mel features (B, T, n_mels).

    ``T = 1 + (N - n_fft) // hop_length`` (waveforms shorter than ``min_samples`` are zero-padded
    up to it). Optional per-utterance ``warp`` factors (B,) stretch the linear-frequency axis
    before the mel filterbank (vocal-tract-length perturbation, training only).
    """

    def __init__(self, config: FrontendConfig, min_frames: int = 1) -> None:
        super().__init__()
        self.config = config
        self.min_samples = config.n_fft + config.hop_length * (min_frames - 1)
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            center=False,
            power=None,  # complex; the power is taken below (complex abs() is ~3x slower)
        )
        self.mel = torchaudio.transforms.MelScale(
            n_mels=config.n_mels,
            sample_rate=config.sample_rate,
            f_min=config.f_min,
            f_max=config.f_max,
            n_stft=config.n_fft // 2 + 1,
        )

    def num_frames(self, samples: torch.Tensor) -> torch.Tensor:
        samples = samples.clamp(min=self.min_samples)
        return 1 + (samples - self.config.n_fft) // self.config.hop_length

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor, warp: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.shape[1] < self.min_samples:
            wave = torch.nn.functional.pad(wave, (0, self.min_samples - wave.shape[1]))
        # The longest utterance's frame count is read where ``lengths`` lives (host-side
        # lengths cost no device sync); the per-utterance counts go to the waveform's device.
        longest = int(self.num_frames(lengths).max())
        frames = self.num_frames(lengths.to(wave.device))
        stft = self.spectrogram(wave)[:, :, :longest]  # complex (B, F, T)
        spec = stft.real.square() + stft.imag.square()  # power spectrum
        if warp is not None:
            spec = warp_frequency(spec, warp)
        feats = torch.log(self.mel(spec) + 1e-6).transpose(1, 2)  # (B, T, M)
        if self.config.normalize == "utterance":
            feats = masked_normalize(feats, frames)
        return feats, frames


def masked_normalize(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance, per-band mean/variance normalisation over true frames; padding -> 0.

    ``feats`` (B, T, F); ``lengths`` (B,) frames, on any device (moved to the features').
    """
    lengths = lengths.to(feats.device)
    valid = (~lengths_to_mask(lengths, feats.shape[1])).unsqueeze(-1).to(feats.dtype)
    count = lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = (feats * valid).sum(1, keepdim=True) / count
    var = (((feats - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (feats - mean) / torch.sqrt(var + 1e-5) * valid


def warp_frequency(spec: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Linear warp of the frequency axis of (B, F, T) power spectra: bin f reads bin f / factor."""
    n_bins = spec.shape[1]
    src = torch.arange(n_bins, dtype=spec.dtype, device=spec.device)[None, :] / factors[:, None]
    src = src.clamp(0, n_bins - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_bins - 1)
    w = (src - lo.to(spec.dtype)).unsqueeze(-1)
    take = lambda idx: torch.gather(spec, 1, idx.unsqueeze(-1).expand(-1, -1, spec.shape[2]))  # noqa: E731
    return take(lo) * (1 - w) + take(hi) * w


@dataclass
class AugmentConfig:
    """Training-time augmentation; each part varies speaker or channel traits."""

    speed: tuple[float, float] = (0.85, 1.15)  # resampling factor range (tempo and pitch)
    vtlp: tuple[float, float] = (0.88, 1.12)  # frequency-warp factor range
    snr_db: tuple[float, float] = (10.0, 40.0)  # additive noise SNR range
    noise_prob: float = 0.5
    gain_db: tuple[float, float] = (-10.0, 6.0)
    ramp_steps: int = 1500  # augmentation probability rises linearly from 0 to 1 over these steps
    freq_masks: int = 2
    freq_mask_width: int = 8
    time_masks: int = 2
    time_mask_fraction: float = 0.05
    enabled: bool = True

    def probability(self, step: int) -> float:
        """Share of utterances augmented at training step ``step`` (0-based): the ramp."""
        return min(1.0, (step + 1) / self.ramp_steps) if self.ramp_steps else 1.0

    def without_specaugment(self) -> AugmentConfig:
        return AugmentConfig(**{**self.__dict__, "freq_masks": 0, "time_masks": 0})


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``wave`` ``factor`` times faster (pitch moves with it), like sox ``speed``."""
    if abs(factor - 1.0) < 1e-3:
        return wave
    orig = 100
    new = max(1, round(orig / factor))
    return AF.resample(wave, orig, new)


def perturb_waves(
    waves: list[torch.Tensor], cfg: AugmentConfig, gen: torch.Generator, prob: float = 1.0
) -> list[torch.Tensor]:
    """Speed, gain and noise perturbation of each 1-D waveform, each with probability ``prob``."""
    out = []
    for w in waves:
        u = torch.rand(4, generator=gen).tolist()
        if torch.rand(1, generator=gen).item() >= prob:
            out.append(w)
            continue
        w = speed_perturb(w, cfg.speed[0] + u[0] * (cfg.speed[1] - cfg.speed[0]))
        gain = cfg.gain_db[0] + u[1] * (cfg.gain_db[1] - cfg.gain_db[0])
        w = w * (10.0 ** (gain / 20.0))
        if u[2] < cfg.noise_prob:
            snr = cfg.snr_db[0] + u[3] * (cfg.snr_db[1] - cfg.snr_db[0])
            power = w.pow(2).mean().clamp(min=1e-10)
            noise = torch.randn(w.shape, generator=gen)
            if torch.rand(1, generator=gen).item() < 0.5:  # brown-ish noise half the time
                noise = torch.cumsum(noise, 0)
                noise = noise - noise.mean()
                noise = noise / noise.std().clamp(min=1e-8)
            w = w + noise * torch.sqrt(power / (10.0 ** (snr / 10.0)))
        peak = w.abs().max().clamp(min=1e-8)
        out.append(w / peak if peak > 1.0 else w)
    return out


def spec_augment(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    cfg: AugmentConfig,
    gen: torch.Generator,
    prob: float = 1.0,
) -> torch.Tensor:
    """SpecAugment frequency and time masks on (B, T, F) normalised features (mask value 0).

    Each utterance is masked with probability ``prob``.
    """
    feats = feats.clone()
    batch, _, n_bins = feats.shape
    for b in range(batch):
        if torch.rand(1, generator=gen).item() >= prob:
            continue
        length = int(lengths[b])
        for _ in range(cfg.freq_masks):
            width = int(torch.randint(0, cfg.freq_mask_width + 1, (1,), generator=gen))
            start = int(torch.randint(0, max(1, n_bins - width), (1,), generator=gen))
            feats[b, :, start : start + width] = 0.0
        max_t = max(1, math.floor(cfg.time_mask_fraction * length))
        for _ in range(cfg.time_masks):
            width = int(torch.randint(0, max_t + 1, (1,), generator=gen))
            start = int(torch.randint(0, max(1, length - width), (1,), generator=gen))
            feats[b, start : start + width, :] = 0.0
    return feats


def warp_factors(
    batch: int, cfg: AugmentConfig, gen: torch.Generator, prob: float = 1.0
) -> torch.Tensor:
    """Per-utterance VTLP factors; an utterance is left unwarped (1.0) with probability 1-prob."""
    lo, hi = cfg.vtlp
    factors = lo + torch.rand(batch, generator=gen) * (hi - lo)
    keep = torch.rand(batch, generator=gen) < prob
    return torch.where(keep, factors, torch.ones_like(factors))
