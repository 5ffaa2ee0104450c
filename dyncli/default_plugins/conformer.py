"""The built-in backbones: Conformer, pre-LN Transformer and wav2vec2 / HuBERT CTC encoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dyncli.models.config import (
    CONFORMER_PRESETS,
    TRANSFORMER_PRESETS,
    WAV2VEC2_PRESETS,
    ConformerConfig,
    TransformerConfig,
    Wav2Vec2Config,
)
from dyncli.registry import BackboneSpec, hookimpl


def _build(config: ConformerConfig, vocab_size: int) -> Any:
    from dyncli.models.conformer import build_conformer_ctc

    return build_conformer_ctc(config, vocab_size)


def _build_wav2vec2(config: Wav2Vec2Config, vocab_size: int) -> Any:
    from dyncli.models.wav2vec2 import build_wav2vec2_ctc

    return build_wav2vec2_ctc(config, vocab_size)


def _build_transformer(config: TransformerConfig, vocab_size: int) -> Any:
    from dyncli.models.transformer import build_transformer_ctc

    return build_transformer_ctc(config, vocab_size)


@hookimpl
def register_backbones(register: Callable[[Any], None]) -> None:
    register(
        BackboneSpec(
            name="conformer",
            config_cls=ConformerConfig,
            build=_build,
            presets=CONFORMER_PRESETS,
            description="log-mel + conv subsampling + torchaudio Conformer layers + CTC head",
        )
    )
    register(
        BackboneSpec(
            name="transformer",
            config_cls=TransformerConfig,
            build=_build_transformer,
            presets=TRANSFORMER_PRESETS,
            description="log-mel + conv subsampling + pre-LN Transformer layers + CTC head (I3D)",
        )
    )
    register(
        BackboneSpec(
            name="wav2vec2",
            config_cls=Wav2Vec2Config,
            build=_build_wav2vec2,
            presets=WAV2VEC2_PRESETS,
            description="raw waveform + conv feature extractor + wav2vec2 / HuBERT layers + CTC "
            "head (torchaudio)",
        )
    )
