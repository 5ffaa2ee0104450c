"""A plain Transformer CTC backbone, registered through dyncli's plugin hooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dyncli import hookimpl
from dyncli.models.config import FrontendConfig
from dyncli.plugins import BackboneSpec


@dataclass
class TransformerConfig:
    d_model: int = 144
    num_heads: int = 4
    ffn_dim: int = 576
    num_layers: int = 12
    dropout: float = 0.1
    subsampling_channels: int = 32
    frontend: FrontendConfig = field(default_factory=FrontendConfig)


PRESETS = {
    "demo": TransformerConfig(),
    "small": TransformerConfig(d_model=96, ffn_dim=384, num_layers=6),
    "tiny": TransformerConfig(
        d_model=32, num_heads=2, ffn_dim=64, num_layers=2, subsampling_channels=4
    ),
}


def build_transformer_ctc(config: TransformerConfig, vocab_size: int) -> Any:
    import math

    import torch

    from dyncli.features import LogMelFrontend
    from dyncli.models.base import CTCEncoder
    from dyncli.models.conformer import Conv2dSubsampling

    class TransformerCTC(CTCEncoder):
        """(B, N) waveform -> (B, T, V) CTC log-probs through Transformer encoder layers."""

        def __init__(self) -> None:
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

        def embed(self, feats: torch.Tensor, lengths: torch.Tensor) -> Any:
            x, out_lengths = self.subsampling(feats, lengths)
            t = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[:, None]
            div = torch.exp(
                torch.arange(0, config.d_model, 2, device=x.device, dtype=x.dtype)
                * (-math.log(10000.0) / config.d_model)
            )
            pe = torch.zeros(x.shape[1], config.d_model, device=x.device, dtype=x.dtype)
            pe[:, 0::2] = torch.sin(t * div)
            pe[:, 1::2] = torch.cos(t * div)
            return x + pe, out_lengths

        def run_layer(self, index: int, x: torch.Tensor, pad_mask: Any) -> torch.Tensor:
            return self.layers[index](x, src_key_padding_mask=pad_mask)

        def log_probs(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(self.head(self.final_norm(x)), dim=-1)

    return TransformerCTC()


@hookimpl
def register_backbones(register: Callable[[Any], None]) -> None:
    register(
        BackboneSpec(
            name="transformer",
            config_cls=TransformerConfig,
            build=build_transformer_ctc,
            presets={k: dataclasses.replace(v) for k, v in PRESETS.items()},
            description="log-mel + conv subsampling + pre-norm Transformer layers + CTC head",
        )
    )
