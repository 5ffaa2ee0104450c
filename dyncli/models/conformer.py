"""Conformer CTC encoder built from torchaudio's Conformer layers.

torchaudio's ``ConformerLayer`` is used for its parameters and sub-modules, but its forward is
re-stated here (:func:`conformer_layer_forward`) for one reason: torchaudio's convolution module
does not mask padded frames, so in a padded batch the depthwise convolution would mix padding
into real frames. Here padded frames are zeroed right before the depthwise convolution, which
makes batched and single-utterance outputs equal.
"""

from __future__ import annotations

import torch
from torchaudio.models.conformer import ConformerLayer

from dyncli.errors import UsageError
from dyncli.features import LogMelFrontend
from dyncli.models.base import CTCEncoder
from dyncli.models.config import ConformerConfig


class Conv2dSubsampling(torch.nn.Module):
    """Two stride-2 3x3 convolutions over (time, mel): (B, T, F) -> (B, T', D), T' ~ T / 4.

    ``T' = ((T - 1) // 2 - 1) // 2`` (no padding, so output frames never read padding).
    Kept narrow (``channels`` = 32 by default): it runs on every frame and is never skipped.
    """

    MIN_INPUT_FRAMES = 7

    def __init__(self, n_mels: int, d_model: int, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, stride=2),
            torch.nn.ReLU(),
        )
        freq = ((n_mels - 1) // 2 - 1) // 2
        self.out = torch.nn.Linear(channels * freq, d_model)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths - 1) // 2 - 1) // 2

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return x, self.output_lengths(lengths)


def conformer_layer_forward(
    layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None
) -> torch.Tensor:
    """torchaudio ``ConformerLayer.forward`` on (B, T, D), with padding masked in the conv module.

    ``pad_mask`` (B, T) is True on padded frames (or None when nothing is padded).
    """
    residual = x
    x = layer.ffn1(x) * 0.5 + residual
    if layer.convolution_first:
        x = x + _conv_module(layer, x, pad_mask)
    residual = x
    h = layer.self_attn_layer_norm(x).transpose(0, 1)  # (T, B, D)
    h, _ = layer.self_attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)
    x = layer.self_attn_dropout(h.transpose(0, 1)) + residual
    if not layer.convolution_first:
        x = x + _conv_module(layer, x, pad_mask)
    residual = x
    x = layer.ffn2(x) * 0.5 + residual
    return layer.final_layer_norm(x)


def _conv_module(
    layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None
) -> torch.Tensor:
    conv = layer.conv_module
    seq = conv.sequential
    h = conv.layer_norm(x).transpose(1, 2)  # (B, D, T)
    h = seq[1](seq[0](h))  # pointwise conv + GLU
    if pad_mask is not None:
        h = h.masked_fill(pad_mask.unsqueeze(1), 0.0)
    for module in list(seq)[2:]:  # depthwise conv, norm, SiLU, pointwise conv, dropout
        h = module(h)
    return h.transpose(1, 2)


class ConformerCTC(CTCEncoder):
    """Log-mel front end, conv subsampling, ``num_layers`` Conformer layers, CTC head.

    Shapes: waveform (B, N) at ``config.frontend.sample_rate`` -> log-probs (B, T, vocab_size),
    T = encoder frames (40 ms each with the default 10 ms hop).
    """

    def __init__(self, config: ConformerConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = config.frontend.sample_rate
        self.frontend = LogMelFrontend(
            config.frontend, min_frames=Conv2dSubsampling.MIN_INPUT_FRAMES
        )
        self.subsampling = Conv2dSubsampling(
            config.frontend.n_mels, config.d_model, config.subsampling_channels
        )
        self.input_dropout = torch.nn.Dropout(config.dropout)
        self.layers = torch.nn.ModuleList(
            ConformerLayer(
                input_dim=config.d_model,
                ffn_dim=config.ffn_dim,
                num_attention_heads=config.num_heads,
                depthwise_conv_kernel_size=config.conv_kernel,
                dropout=config.dropout,
            )
            for _ in range(config.num_layers)
        )
        self.head = torch.nn.Linear(config.d_model, vocab_size)

    def embed(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.subsampling(feats, lengths)
        return self.input_dropout(x), out_lengths

    def run_layer(self, index: int, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        layer = self.layers[index]
        assert isinstance(layer, ConformerLayer)
        return conformer_layer_forward(layer, x, pad_mask)


def build_conformer_ctc(config: ConformerConfig, vocab_size: int) -> ConformerCTC:
    """Factory: every setting comes from ``config``; see ``CONFORMER_PRESETS`` for presets."""
    if config.d_model % config.num_heads:
        raise UsageError(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})"
        )
    return ConformerCTC(config, vocab_size)
