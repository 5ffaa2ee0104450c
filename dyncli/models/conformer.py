"""Conformer CTC encoder built from torchaudio's Conformer layers.

torchaudio's ``ConformerLayer`` is used for its parameters and sub-modules, but its forward is
re-stated here (:func:`conformer_layer_forward`) for one reason: torchaudio's convolution module
does not mask padded frames, so in a padded batch the depthwise convolution would mix padding
into real frames. Here padded frames are zeroed right before the depthwise convolution, which
makes batched and single-utterance outputs equal.

In eval mode the same maths runs through :func:`conformer_layer_inference`, which calls the
functional ops directly (no dropout modules, attention through
``F.scaled_dot_product_attention`` on the packed in-projection). At the small sizes a skipped
layer leaves behind (tens of frames), a layer's time is dominated by per-op Python overhead;
trimming it is what lets wall-clock savings follow FLOP savings. A test pins it to the module
path.
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


def conformer_layer_inference(
    layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None
) -> torch.Tensor:
    """Eval-mode :func:`conformer_layer_forward` with minimal per-op overhead; (B, T, D)."""
    f = torch.nn.functional
    d = x.shape[-1]
    x = torch.add(x, _ffn_inference(layer.ffn1.sequential, x), alpha=0.5)
    if layer.convolution_first:
        x = x + _conv_inference(layer, x, pad_mask)
    ln = layer.self_attn_layer_norm
    h = f.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)
    mha = layer.self_attn
    b, t, _ = h.shape
    heads = mha.num_heads
    q, k, v = (
        f.linear(h, mha.in_proj_weight, mha.in_proj_bias)
        .view(b, t, 3, heads, d // heads)
        .permute(2, 0, 3, 1, 4)
        .unbind(0)
    )  # each (B, H, T, Dh)
    mask = None if pad_mask is None else ~pad_mask[:, None, None, :]
    h = f.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    h = f.linear(h.transpose(1, 2).reshape(b, t, d), mha.out_proj.weight, mha.out_proj.bias)
    x = x + h
    if not layer.convolution_first:
        x = x + _conv_inference(layer, x, pad_mask)
    x = torch.add(x, _ffn_inference(layer.ffn2.sequential, x), alpha=0.5)
    ln = layer.final_layer_norm
    return f.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)


def _ffn_inference(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    f = torch.nn.functional
    norm, lin1, lin2 = seq[0], seq[1], seq[4]
    assert isinstance(norm, torch.nn.LayerNorm)
    assert isinstance(lin1, torch.nn.Linear) and isinstance(lin2, torch.nn.Linear)
    h = f.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return f.linear(f.silu(f.linear(h, lin1.weight, lin1.bias)), lin2.weight, lin2.bias)


def _conv_inference(
    layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None
) -> torch.Tensor:
    """The convolution module in (B, T, C) layout: pointwise convolutions as linear maps, the
    depthwise convolution as a dot product over a sliding window (``unfold`` + ``vecdot``),
    BatchNorm folded to a scale and shift. Same maths as the modules, a fraction of the
    per-call overhead at small T (the oneDNN depthwise kernel alone costs ~60 us per call)."""
    f = torch.nn.functional
    conv = layer.conv_module
    seq = conv.sequential
    ln = conv.layer_norm
    pw1, dw, norm, pw2 = seq[0], seq[2], seq[3], seq[5]
    h = f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    h = f.glu(f.linear(h, pw1.weight.squeeze(-1), pw1.bias), dim=-1)  # (B, T, C)
    if pad_mask is not None:
        h = h.masked_fill(pad_mask.unsqueeze(-1), 0.0)
    k = dw.kernel_size[0]
    pad = (k - 1) // 2
    window = f.pad(h, (0, 0, pad, pad)).unfold(1, k, 1)  # (B, T, C, k)
    h = torch.linalg.vecdot(window, dw.weight.squeeze(1))
    if dw.bias is not None:
        h = h + dw.bias
    if isinstance(norm, torch.nn.BatchNorm1d):
        assert norm.running_var is not None and norm.running_mean is not None
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        h = torch.addcmul(norm.bias - norm.running_mean * scale, h, scale)
    else:
        h = norm(h.transpose(1, 2)).transpose(1, 2)
    return f.linear(f.silu(h), pw2.weight.squeeze(-1), pw2.bias)


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
        if layer.training:
            return conformer_layer_forward(layer, x, pad_mask)
        return conformer_layer_inference(layer, x, pad_mask)


def build_conformer_ctc(config: ConformerConfig, vocab_size: int) -> ConformerCTC:
    """Factory: every setting comes from ``config``; see ``CONFORMER_PRESETS`` for presets."""
    if config.d_model % config.num_heads:
        raise UsageError(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})"
        )
    return ConformerCTC(config, vocab_size)
