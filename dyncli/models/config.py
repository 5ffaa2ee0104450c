"""Model configurations as plain dataclasses (importing this module does not import torch)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dyncli.errors import CheckpointError

T = TypeVar("T")


@dataclass
class FrontendConfig:
    """Log-mel front end. Sizes are in samples at ``sample_rate`` Hz."""

    sample_rate: int = 8000
    n_fft: int = 256  # 32 ms at 8 kHz
    win_length: int = 200  # 25 ms
    hop_length: int = 80  # 10 ms
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float | None = None
    # per-utterance mean/variance over true frames, or "none"
    normalize: str = field(default="utterance", metadata={"choices": ("utterance", "none")})


@dataclass
class ConformerConfig:
    """Conformer CTC encoder.

    Audio -> log-mel (``frontend``) -> 2-D convolutional subsampling (4x in time, so one encoder
    frame is 40 ms at a 10 ms hop) -> ``num_layers`` torchaudio Conformer layers of width
    ``d_model`` -> linear CTC head.
    """

    d_model: int = 144
    num_heads: int = 4
    ffn_dim: int = 288
    num_layers: int = 12
    conv_kernel: int = 15
    dropout: float = 0.1
    subsampling_channels: int = 32
    frontend: FrontendConfig = field(default_factory=FrontendConfig)


CONFORMER_PRESETS: dict[str, ConformerConfig] = {
    # The bundled demo model: deep enough for layer skipping to have work to do.
    "demo": ConformerConfig(),
    # A small model for quick experiments.
    "small": ConformerConfig(d_model=96, num_heads=4, ffn_dim=192, num_layers=6),
    # For tests: builds and runs in milliseconds.
    "tiny": ConformerConfig(
        d_model=32, num_heads=2, ffn_dim=64, num_layers=3, conv_kernel=5, subsampling_channels=4
    ),
}


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def sample_rate_of(config: Any) -> int:
    """The input sample rate a backbone config expects (its front end's, or its own)."""
    frontend = getattr(config, "frontend", None)
    return int(frontend.sample_rate if frontend is not None else config.sample_rate)


def config_from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Rebuild a (possibly nested) config dataclass from a checkpoint, refusing unknown keys
    and values of the wrong type or range (ints must be > 0, floats finite, dropouts in
    [0, 1), strings one of a field's ``choices`` metadata). Errors name the field."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise CheckpointError(f"model {where} for {cls.__name__} is not a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"model config has unknown keys for {cls.__name__}: {unknown}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[key] = config_from_dict(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _checked(f"{prefix}{key}", hint, value, fields[key].metadata)
    return cls(**kwargs)


def _checked(name: str, hint: Any, value: Any, meta: Any) -> Any:
    """``value`` as field ``name`` of type ``hint`` holds it, or a CheckpointError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        if len(args) == 1:
            return _checked(name, args[0], value, meta)
        return value
    if origin in (list, tuple) and typing.get_args(hint):
        if not isinstance(value, list | tuple):
            raise CheckpointError(f"model config {name}={value!r} is not a list")
        item = typing.get_args(hint)[0]
        items = [_checked(f"{name}[{i}]", item, v, meta) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool and not isinstance(value, bool):
        raise CheckpointError(f"model config {name}={value!r} is not true or false")
    if hint is int and (type(value) is not int or value < meta.get("min", 1)):
        raise CheckpointError(
            f"model config {name}={value!r} is not an integer >= {meta.get('min', 1)}"
        )
    if hint is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise CheckpointError(f"model config {name}={value!r} is not a finite number")
        if name.endswith("dropout") and not 0 <= value < 1:
            raise CheckpointError(f"model config {name}={value!r} is not in [0, 1)")
        return float(value)
    if hint is str:
        choices = meta.get("choices")
        if not isinstance(value, str) or (choices and value not in choices):
            also = f" (one of: {', '.join(choices)})" if choices else ""
            raise CheckpointError(f"model config {name}={value!r} is not a valid string{also}")
    return value


@dataclass
class TransformerConfig:
    d_model: int = 144
    num_heads: int = 4
    ffn_dim: int = 576
    num_layers: int = 12
    dropout: float = 0.1
    subsampling_channels: int = 32
    frontend: FrontendConfig = field(default_factory=FrontendConfig)


TRANSFORMER_PRESETS = {
    "demo": TransformerConfig(),
    "small": TransformerConfig(d_model=96, ffn_dim=384, num_layers=6),
    "tiny": TransformerConfig(
        d_model=32, num_heads=2, ffn_dim=64, num_layers=2, subsampling_channels=4
    ),
}


@dataclass
class Wav2Vec2Config:
    """torchaudio's ``wav2vec2_model`` factory arguments (wav2vec2 and HuBERT share the
    architecture; with ``wavlm``, ``wavlm_model``'s, adding the relative position buckets), plus
    the input rate and whether waveforms are normalised per utterance (Hugging Face's
    ``do_normalize``)."""

    extractor_mode: str = field(
        default="group_norm", metadata={"choices": ("group_norm", "layer_norm")}
    )
    extractor_conv_layer_config: list[list[int]] | None = None  # None: the 7-layer wav2vec2 stack
    extractor_conv_bias: bool = False
    encoder_embed_dim: int = 768
    encoder_projection_dropout: float = 0.1
    encoder_pos_conv_kernel: int = 128
    encoder_pos_conv_groups: int = 16
    encoder_num_layers: int = 12
    encoder_num_heads: int = 12
    encoder_attention_dropout: float = 0.1
    encoder_ff_interm_features: int = 3072
    encoder_ff_interm_dropout: float = 0.0
    encoder_dropout: float = 0.1
    encoder_layer_norm_first: bool = False
    sample_rate: int = 16000
    normalize_waveform: bool = False
    wavlm: bool = False  # WavLM: gated relative position bias in every layer's attention
    encoder_num_buckets: int = 320
    encoder_max_distance: int = 800

    @property
    def num_layers(self) -> int:
        return self.encoder_num_layers


WAV2VEC2_PRESETS = {
    "base": Wav2Vec2Config(),
    "tiny": Wav2Vec2Config(
        extractor_conv_layer_config=[[16, 10, 5], [16, 3, 2], [16, 2, 2]],
        encoder_embed_dim=32,
        encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4,
        encoder_num_layers=3,
        encoder_num_heads=2,
        encoder_ff_interm_features=64,
        sample_rate=8000,
    ),
}
