"""The interface every backbone implements, so dynamic-depth code is written once.

A CTC encoder is a pipeline whose middle part is a list of layers that can be run one by one::

    wave (B, N) --frontend--> feats (B, T_f, F) --embed--> x (B, T, D)
        --layers[0..L-1] (run_layer)--> x (B, T, D) --head--> log-probs (B, T, V)

Later features insert heads, gates and frame skipping between layers through ``run_layer``.
"""

from __future__ import annotations

import torch

from dyncli.features import lengths_to_mask


class CTCEncoder(torch.nn.Module):
    """Base class for backbones. Subclasses set ``frontend``, ``layers``, ``head``."""

    frontend: torch.nn.Module
    layers: torch.nn.ModuleList
    head: torch.nn.Linear
    sample_rate: int

    def embed(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T_f, F) -> encoder input (B, T, D) and its lengths."""
        raise NotImplementedError

    def run_layer(self, index: int, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """Run layer ``index`` on (B, T, D); ``pad_mask`` (B, T) is True on padding, or None."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def features(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.frontend(wave, lengths)
        return feats, frames

    def encode_features(
        self, feats: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features -> final encoder output (B, T, D) and lengths, through every layer."""
        x, lengths = self.embed(feats, frames)
        pad_mask = lengths_to_mask(lengths, x.shape[1]) if x.shape[0] > 1 else None
        for i in range(self.num_layers):
            x = self.run_layer(i, x, pad_mask)
        return x, lengths

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(x), dim=-1)

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, N) and sample counts (B,) -> CTC log-probs (B, T, V) and lengths (B,)."""
        feats, frames = self.features(wave, lengths)
        x, out_lengths = self.encode_features(feats, frames)
        return self.log_probs(x), out_lengths
