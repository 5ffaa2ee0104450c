"""Memory a model would need, estimated from its config before anything is built.

A config with an extreme frame rate (convolution strides of 1) or huge widths builds a model
that the out-of-memory killer ends on its first utterance; :func:`check_fits` refuses it up
front with one line instead. Importing this module does not import torch.
"""

from __future__ import annotations

import os

from dyncli.errors import CheckpointError
from dyncli.models.config import Wav2Vec2Config

REFERENCE_SECONDS = 30.0  # the utterance length the activation estimate is made for
WAV2VEC2_CONV = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2  # torchaudio's default
FLOAT = 4  # bytes


def wav2vec2_estimate(
    config: Wav2Vec2Config, seconds: float = REFERENCE_SECONDS
) -> dict[str, float]:
    """Parameters, encoder frames per second and peak bytes of a wav2vec2-style model on one
    utterance of ``seconds``: three copies of the weights (the source model, dyncli's, a state
    dict) plus the largest activation (a convolution's input and output, or one encoder
    layer's attention scores and feed-forward)."""
    conv = config.extractor_conv_layer_config or WAV2VEC2_CONV
    hidden, ffn = config.encoder_embed_dim, config.encoder_ff_interm_features
    heads, layers = config.encoder_num_heads, config.encoder_num_layers
    params, channels, frames = 0, 1, seconds * config.sample_rate
    conv_peak = 0.0
    for dim, kernel, stride in conv:
        params += dim * channels * kernel
        out = max((frames - kernel) // stride + 1, 0)
        conv_peak = max(conv_peak, 2 * (channels * frames + dim * out))  # + the norm's copy
        channels, frames = dim, out
    params += channels * hidden
    params += (
        hidden * hidden // max(config.encoder_pos_conv_groups, 1) * config.encoder_pos_conv_kernel
    )
    params += layers * (4 * hidden * hidden + 2 * hidden * ffn)
    layer_peak = 2 * heads * frames * frames + frames * (4 * hidden + ffn)
    need = FLOAT * (3 * params + max(conv_peak, layer_peak))
    return {"parameters": params, "frames_per_second": frames / seconds, "bytes": need}


def available_bytes() -> int | None:
    """Memory available to a new allocation: MemAvailable, else physical memory; None when
    neither can be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def check_fits(config: Wav2Vec2Config, where: str) -> None:
    """Refuse (``CheckpointError``, one line naming ``where``) a config whose estimate
    (:func:`wav2vec2_estimate`) exceeds the memory available."""
    est = wav2vec2_estimate(config)
    have = available_bytes()
    if have is None or est["bytes"] <= have:
        return
    raise CheckpointError(
        f"{where}: refused: the model would need about {est['bytes'] / 2**30:,.1f} GiB of memory "
        f"for {REFERENCE_SECONDS:g} s of audio ({est['frames_per_second']:,.0f} encoder frames "
        f"per second, {est['parameters'] / 1e6:,.1f} M parameters), more than the "
        f"{have / 2**30:,.1f} GiB available; check its conv_stride and sizes"
    )
