"""Training-time augmentation: speed perturbation, SpecAugment, vocal-tract-length warping
factors and noise, with their configuration (:class:`AugmentConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF


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
