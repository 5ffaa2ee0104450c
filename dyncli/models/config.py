"""Model configurations as plain dataclasses (importing this module does not import torch)."""

from __future__ import annotations

import dataclasses
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
    normalize: str = "utterance"  # per-utterance mean/variance over true frames, or "none"


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


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (possibly nested) config dataclass, refusing unknown keys."""
    if not isinstance(data, dict):
        raise CheckpointError(f"model config for {cls.__name__} is not a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"model config has unknown keys for {cls.__name__}: {unknown}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[key] = config_from_dict(hint, value)
        elif isinstance(value, list) and _is_tuple(hint):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _is_tuple(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(hint))
    return origin is tuple


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
