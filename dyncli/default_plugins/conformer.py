"""The built-in Conformer CTC backbone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dyncli.hookspecs import hookimpl
from dyncli.models.config import CONFORMER_PRESETS, ConformerConfig
from dyncli.plugins import BackboneSpec


def _build(config: ConformerConfig, vocab_size: int) -> Any:
    from dyncli.models.conformer import build_conformer_ctc

    return build_conformer_ctc(config, vocab_size)


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
