"""Building blocks every backbone shares: the log-mel front end and padding masks.

The front end is deliberately cheap (a 40-band log-mel at 10 ms hop) so that the encoder, the
part dynamic depth can skip, dominates the cost. Frames are computed with ``center=False`` and
normalised over each utterance's true frames only, so a padded batch gives exactly the features
each utterance gets alone. Vocal-tract-length warping (``warp``) is applied to the spectrogram
here; the training-time choice of factors is :mod:`dyncli.training.augment`'s.
"""

from __future__ import annotations

import torch
import torchaudio

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
        frames = self.num_frames(lengths.to(wave.device))
        if torch.compiler.is_exporting() and wave.shape[0] == 1:
            # An exported graph (batch 1: the wave is the utterance) reads no length from data.
            spec = self.dft_power(wave)
        else:
            # The longest utterance's frame count is read where ``lengths`` lives (host-side
            # lengths cost no device sync); the per-utterance counts go to the wave's device.
            longest = int(self.num_frames(lengths).max())
            stft = self.spectrogram(wave)[:, :, :longest]  # complex (B, F, T)
            spec = stft.real.square() + stft.imag.square()  # power spectrum
        if warp is not None:
            spec = warp_frequency(spec, warp)
        feats = torch.log(self.mel(spec) + 1e-6).transpose(1, 2)  # (B, T, M)
        if self.config.normalize == "utterance":
            feats = masked_normalize(feats, frames)
        return feats, frames

    def dft_power(self, wave: torch.Tensor) -> torch.Tensor:
        """The power spectrum :attr:`spectrogram` gives, (B, F, T), as one strided convolution
        with the windowed DFT basis (cosines then sines): what an exported graph computes, since
        onnxruntime's STFT kernel took ~1.5 ms an utterance, as long as a quarter of the
        encoder's layers, and this GEMM a tenth of it."""
        n_fft, hop = self.config.n_fft, self.config.hop_length
        window = self.spectrogram.window
        left = (n_fft - window.numel()) // 2  # torch.stft centres a shorter window
        window = torch.nn.functional.pad(window, (left, n_fft - window.numel() - left))
        bins = n_fft // 2 + 1
        k = torch.arange(bins, device=wave.device)[:, None]
        n = torch.arange(n_fft, device=wave.device)[None, :]
        angle = (k * n % n_fft).to(wave.dtype) * (2 * torch.pi / n_fft)  # exact phase index
        basis = torch.cat([torch.cos(angle), torch.sin(angle)]) * window  # (2F, n_fft)
        parts = torch.nn.functional.conv1d(wave[:, None], basis[:, None], stride=hop)
        return parts[:, :bins].square() + parts[:, bins:].square()


def masked_normalize(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance, per-band mean/variance normalisation over true frames; padding -> 0.

    ``feats`` (B, T, F); ``lengths`` (B,) frames, on any device (moved to the features').
    """
    lengths = lengths.to(feats.device)
    valid = (~lengths_to_mask(lengths, feats.shape[1])).unsqueeze(-1).to(feats.dtype)
    count = lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    # Shifted by each utterance's first frame (always a true frame): a band that is constant
    # over the utterance (silence) is then exactly 0, not rounding noise of the mean divided
    # by sqrt(1e-5), which differed between runtimes (onnxruntime vs eager: 0.1 in log-probs).
    x = (feats - feats[:, :1]) * valid
    mean = x.sum(1, keepdim=True) / count
    var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + 1e-5) * valid


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
