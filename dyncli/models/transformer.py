"""A plain pre-LN Transformer CTC encoder (the I3D paper's backbone) with dyncli's front end.

Log-mel features, the Conformer's narrow convolutional subsampling, sinusoidal positions, then
``num_layers`` pre-LN Transformer layers, a final LayerNorm and the CTC head. Each layer is two
named residual blocks (:func:`transformer_layer`)::

    attn:  x + Dropout(SelfAttention(LN1(x)))
    ffn:   x + Dropout(W2 Dropout(ReLU(W1 LN2(x))))

stated once for training and inference on the parameters of ``torch.nn.TransformerEncoderLayer``
(``batch_first``, ``norm_first``), so checkpoints of the former example plugin load unchanged and
a test pins the maths to the module's own forward. A pre-LN encoder has no norm at the end of a
layer: its final LayerNorm runs once, after the last layer, and every CTC head reads through it
(:meth:`TransformerCTC.head_input`), the exit heads included, as the final head was trained to.
Both blocks can carry a gate (I3D gates attention and feed-forward modules).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder, Gates, apply_gate
from dyncli.models.components import LogMelFrontend
from dyncli.models.config import TransformerConfig
from dyncli.models.conformer import Conv2dSubsampling

ATTN, FFN = "attn", "ffn"


def transformer_layer(
    layer: torch.nn.TransformerEncoderLayer,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    gates: Gates | None = None,
) -> torch.Tensor:
    """One pre-LN layer on (B, T, D); ``pad_mask`` (B, T) True on padding. Dropout follows the
    layer's mode. A gate works as in :func:`dyncli.models.conformer.conformer_layer`: a float
    gate scales the branch (training, every row computed), a bool one decides, and in a batch
    only the utterances whose gate is open run the block."""
    for name in (ATTN, FFN):
        gate = True if gates is None else gates.get(name, True)

        def branch(rows: torch.Tensor | None, name: str = name, h: torch.Tensor = x) -> Any:
            if rows is None:
                return transformer_block(layer, name, h, pad_mask)
            sub = None if pad_mask is None else pad_mask[rows]
            return transformer_block(layer, name, h[rows], sub)

        x = apply_gate(x, gate, branch)
    return x


def transformer_block(
    layer: torch.nn.TransformerEncoderLayer,
    name: str,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The residual branch f(x) of block ``name`` (``attn`` or ``ffn``)."""
    f = torch.nn.functional
    train = layer.training
    if name == ATTN:
        ln = layer.norm1
        h = f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        attn = layer.self_attn
        b, t, d = h.shape
        heads = attn.num_heads
        q, k, v = (
            f.linear(h, attn.in_proj_weight, attn.in_proj_bias)
            .view(b, t, 3, heads, d // heads)
            .permute(2, 0, 3, 1, 4)
        ).unbind(0)
        mask = None if pad_mask is None else ~pad_mask[:, None, None, :]
        p = attn.dropout if train else 0.0
        h = f.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        h = f.linear(h.transpose(1, 2).reshape(b, t, d), attn.out_proj.weight, attn.out_proj.bias)
        return f.dropout(h, layer.dropout1.p, train)
    if name == FFN:
        ln = layer.norm2
        h = f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        h = f.dropout(f.relu(layer.linear1(h)), layer.dropout.p, train)
        return f.dropout(layer.linear2(h), layer.dropout2.p, train)
    raise KeyError(f"a Transformer layer has no block {name!r}")


class TransformerCTC(CTCEncoder):
    """(B, N) waveform -> (B, T, V) CTC log-probs through pre-LN Transformer layers."""

    def __init__(self, config: TransformerConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = config.frontend.sample_rate
        self.frontend = LogMelFrontend(
            config.frontend, min_frames=Conv2dSubsampling.MIN_INPUT_FRAMES
        )
        self.subsampling = Conv2dSubsampling(
            config.frontend.n_mels, config.d_model, config.subsampling_channels
        )
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(
                config.d_model,
                config.num_heads,
                config.ffn_dim,
                config.dropout,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = torch.nn.LayerNorm(config.d_model)
        self.head = torch.nn.Linear(config.d_model, vocab_size)

    def embed(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.subsampling(feats, lengths)
        d = self.config.d_model
        t = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[:, None]
        div = torch.exp(
            torch.arange(0, d, 2, device=x.device, dtype=x.dtype) * (-math.log(10000.0) / d)
        )
        pe = torch.zeros(x.shape[1], d, device=x.device, dtype=x.dtype)
        pe[:, 0::2] = torch.sin(t * div)
        pe[:, 1::2] = torch.cos(t * div)
        return x + pe, out_lengths

    def blocks(self, index: int) -> tuple[str, ...]:
        return (ATTN, FFN)

    @property
    def gateable_blocks(self) -> tuple[str, ...]:
        return (ATTN, FFN)

    def run_layer(
        self,
        index: int,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        gates: Gates | None = None,
        positions: torch.Tensor | None = None,  # absolute positions only: not read
    ) -> torch.Tensor:
        layer = self.layers[index]
        assert isinstance(layer, torch.nn.TransformerEncoderLayer)
        return transformer_layer(layer, x, pad_mask, gates)

    def run_block(
        self, index: int, name: str, x: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        layer = self.layers[index]
        assert isinstance(layer, torch.nn.TransformerEncoderLayer)
        return transformer_block(layer, name, x, pad_mask)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_norm(x)


def build_transformer_ctc(config: TransformerConfig, vocab_size: int) -> Any:
    """Factory: every setting comes from ``config``; see ``TRANSFORMER_PRESETS``."""
    if config.d_model % config.num_heads:
        raise UsageError(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})"
        )
    if config.d_model % 2:
        raise UsageError(f"d_model ({config.d_model}) must be even (sinusoidal positions)")
    return TransformerCTC(config, vocab_size)
