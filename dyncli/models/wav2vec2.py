"""wav2vec2 / HuBERT CTC encoders (torchaudio's ``Wav2Vec2Model``) with their layers exposed.

The pipeline, split where dyncli needs it::

    wave --features: conv feature extractor--> (B, T, C) --embed: feature projection, padded
    frames zeroed, convolutional positional embedding (+ LayerNorm in the post-LN variant)-->
    x (B, T, D) --layers, one by one--> (+ LayerNorm in the pre-LN variant) --head--> CTC

(the post-LN variant normalises in ``embed``, after the positional embedding)

The convolutional positional embedding runs once, in ``embed``, before the first layer: it is
never skipped, and it and the feature extractor are counted in the front end's FLOPs.

Each layer is stated once (:func:`w2v_layer`) as two named blocks, ``attn`` and ``ffn``, on the
parameters of torchaudio's ``EncoderLayer`` (a test pins it to that module). In the pre-LN
("stable layer norm") variant a block is ``x + f(LN(x))``. In the post-LN variant a block is
``LN(x + f(x))``, which is not a residual, so its branch is stated as the change it makes,
``LN(x + f(x)) - x``: bypassing the block (a closed gate) skips the sub-layer and its norm, and
a soft gate interpolates between the block's output and its input.

Where the encoder's LayerNorm comes after the layers (the pre-LN "stable layer norm" variant,
``encoder_layer_norm_first``), every CTC head, the exit heads included, reads through it
(:meth:`Wav2Vec2CTC.head_input`); in the post-LN variant it runs before the first layer, in
``embed``.

Under inference (grad disabled) the attention and feed-forward branches run on weights prepared
once per module (:func:`lean_linears`): q, k and v fused into one projection and every Linear
weight kept as an ``(in, out)`` contiguous matrix passed transposed to ``F.linear``, as the
Conformer path does (:func:`dyncli.models.conformer.lean_weights`). At the tens of frames a
skipped layer leaves behind the GEMM is then faster; with grad enabled the branches call the
``nn.Linear`` modules themselves.

Models are built from torchaudio's factory (:func:`torchaudio.models.wav2vec2_model`) and can be
loaded from a torchaudio state dict with :func:`from_torchaudio`. WavLM, whose first layer
computes a relative position bias the later layers reuse, is supported by recomputing that bias
in every layer (:meth:`Wav2Vec2CTC.position_bias`): it depends only on the frame positions and
the first layer's bucket embedding, so no state passes between layers. Blank-skip, which removes
frames, passes the kept frames' original positions, so each sees the bias it would have seen in
the full sequence.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch

from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder, Gates, apply_gate
from dyncli.models.config import Wav2Vec2Config
from dyncli.models.conformer import _slots, _version

ATTN, FFN = "attn", "ffn"


def factory_kwargs(config: Wav2Vec2Config) -> dict[str, Any]:
    """``wav2vec2_model`` keyword arguments from ``config`` (dyncli's own fields dropped)."""
    kwargs = dataclasses.asdict(config)
    for key in ("sample_rate", "normalize_waveform", "wavlm"):
        kwargs.pop(key)
    if not config.wavlm:
        for key in ("encoder_num_buckets", "encoder_max_distance"):
            kwargs.pop(key)
    layers = kwargs["extractor_conv_layer_config"]
    kwargs["extractor_conv_layer_config"] = None if layers is None else [tuple(c) for c in layers]
    kwargs["encoder_layer_drop"] = 0.0  # layer drop is dyncli's to do (convert --method ...)
    return kwargs


class Wav2Vec2CTC(CTCEncoder):
    """A torchaudio wav2vec2 / HuBERT model with a CTC head, its layers reachable one by one."""

    def __init__(self, config: Wav2Vec2Config, vocab_size: int) -> None:
        super().__init__()
        from torchaudio.models import wav2vec2_model, wavlm_model

        if config.extractor_mode not in ("group_norm", "layer_norm"):
            raise UsageError(f"wav2vec2: unknown extractor_mode {config.extractor_mode!r}")
        self.config = config
        self.sample_rate = config.sample_rate
        factory = wavlm_model if config.wavlm else wav2vec2_model
        w2v = factory(**factory_kwargs(config), aux_num_out=vocab_size)
        # WavLM: the relative position bias is a function of frame positions and of the first
        # layer's bucket embedding, so every layer recomputes it for its input rather than
        # receiving it from the layer before: no state passes between layers, and dropping or
        # gating any layer (the first included) leaves the others' bias intact. A policy that
        # removes frames passes their original positions (``positions=``), so the kept frames
        # see the bias they would have seen in the full sequence.
        self.relative_positions = config.wavlm
        transformer = w2v.encoder.transformer
        self.feature_extractor = w2v.feature_extractor
        self.feature_projection = w2v.encoder.feature_projection
        self.pos_conv_embed = transformer.pos_conv_embed
        self.encoder_norm = transformer.layer_norm
        self.encoder_dropout = transformer.dropout
        self.layers = transformer.layers
        assert w2v.aux is not None
        self.head = w2v.aux
        # torchaudio's encoder-level flag: True means the LayerNorm comes before the layers
        # (the post-LN layers of wav2vec2 base); pre-LN layers get it after the last layer.
        self.norm_after_layers = not transformer.layer_norm_first
        self.frontend = _WaveFrontend(self)

    @property
    def min_samples(self) -> int:
        """The shortest wave the convolutional feature extractor turns into one frame; a
        shorter one is zero-padded up to it (as the log-mel front end pads)."""
        need = 1
        for layer in reversed(list(self.feature_extractor.conv_layers)):
            need = (need - 1) * int(layer.conv.stride[0]) + int(layer.conv.kernel_size[0])
        return need

    def features(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        least = self.min_samples
        if not torch.compiler.is_exporting() and wave.shape[1] < least:
            wave = torch.nn.functional.pad(wave, (0, least - wave.shape[1]))
        lengths = lengths.clamp(min=least)  # (an exported graph pads before it gets here)
        if self.config.normalize_waveform:
            wave = _normalize(wave, lengths.to(wave.device))
        feats, frames = self.feature_extractor(wave, lengths.to(wave.device))
        assert frames is not None
        return feats, frames

    def embed(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.feature_projection(feats)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # as torchaudio's encoder does
        x = x + self.pos_conv_embed(x)
        if not self.norm_after_layers:
            x = self.encoder_norm(x)
        return self.encoder_dropout(x), lengths

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
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``positions`` (B, T): each frame's index in the full sequence, when a policy removed
        frames (WavLM's bias depends on them); None for contiguous frames 0..T-1."""
        bias = self.position_bias(x, positions)
        return w2v_layer(self.layers[index], x, pad_mask, gates, bias)

    def run_block(
        self, index: int, name: str, x: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        return w2v_block(self.layers[index], name, x, pad_mask, self.position_bias(x))

    def position_bias(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """WavLM's relative position bias (B, H, T, T): for contiguous frames what its first
        layer computes and hands on; for frames at ``positions`` (B, T) the rows and columns of
        the full sequence's bias that those frames own. None for wav2vec2 / HuBERT."""
        if not self.relative_positions:
            return None
        t = x.shape[1]
        attention: Any = self.layers[0].attention
        if positions is None:
            bias: torch.Tensor = attention.compute_bias(t, t)  # (H, T, T)
            return bias.unsqueeze(0).expand(x.shape[0], -1, -1, -1).to(x.dtype)
        positions = positions.to(torch.long)
        relative = positions[:, None, :] - positions[:, :, None]  # key minus query, (B, T, T)
        buckets = attention._relative_positions_bucket(relative, bidirectional=True)
        values = attention.rel_attn_embed(buckets.to(x.device))  # (B, T, T, H)
        return values.permute(0, 3, 1, 2).to(x.dtype)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder_norm(x) if self.norm_after_layers else x


class _WaveFrontend(torch.nn.Module):
    """``model.frontend(wave, lengths, warp=None)`` for the training engine: the raw-waveform
    front end (no log-mel; vocal-tract-length warping does not apply)."""

    def __init__(self, model: Wav2Vec2CTC) -> None:
        super().__init__()
        self._model = [model]  # a plain reference: not a sub-module (no parameter twice)

    @property
    def min_samples(self) -> int:
        return self._model[0].min_samples

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor, warp: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._model[0].features(wave, lengths)


def _normalize(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its true samples (padding stays 0)."""
    valid = (torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]).to(
        wave.dtype
    )
    n = valid.sum(dim=1, keepdim=True).clamp(min=1)
    # shifted by the first sample: a constant wave is exactly 0, not rounding noise / sqrt(1e-7)
    x = (wave - wave[:, :1]) * valid
    mean = x.sum(dim=1, keepdim=True) / n
    var = ((x - mean) ** 2 * valid).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + 1e-7) * valid


def w2v_layer(
    layer: Any,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    gates: Gates | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ``EncoderLayer`` on (B, T, D) as blocks ``attn`` then ``ffn``; gates as in
    :func:`dyncli.models.conformer.conformer_layer`."""
    for name in (ATTN, FFN):
        gate = True if gates is None else gates.get(name, True)

        def branch(rows: torch.Tensor | None, name: str = name, h: torch.Tensor = x) -> Any:
            if rows is None:
                return w2v_block(layer, name, h, pad_mask, bias)
            sub = None if pad_mask is None else pad_mask[rows]
            return w2v_block(layer, name, h[rows], sub, None if bias is None else bias[rows])

        x = apply_gate(x, gate, branch)
    return x


def w2v_block(
    layer: Any,
    name: str,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The change block ``name`` makes to x: ``f(LN(x))`` (pre-LN) or ``LN(x + f(x)) - x``
    (post-LN). Grad disabled: on :func:`lean_linears` (WavLM's attention excepted)."""
    f = torch.nn.functional
    train = layer.training
    pre = layer.layer_norm_first
    lean = not torch.is_grad_enabled()
    if name == ATTN and bias is not None:  # WavLM: torchaudio's gated relative-bias attention
        h = layer.layer_norm(x) if pre else x
        h, _ = layer.attention(h, key_padding_mask=pad_mask, position_bias=bias)
        h = layer.dropout(h)
        return h if pre else layer.layer_norm(x + h) - x
    if name == ATTN:
        h = layer.layer_norm(x) if pre else x
        attn = layer.attention
        b, t, d = h.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        if lean:
            qkv_w, qkv_b, out_w, out_b = lean_linears(attn)
            qkv = f.linear(h, qkv_w, qkv_b).view(b, t, 3, heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Hd)
        else:
            shape = (b, t, heads, head_dim)
            q = attn.q_proj(h).view(shape).transpose(1, 2)
            k = attn.k_proj(h).view(shape).transpose(1, 2)
            v = attn.v_proj(h).view(shape).transpose(1, 2)
        mask = None if pad_mask is None else ~pad_mask[:, None, None, :]
        p = attn.dropout if train else 0.0
        h = f.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        h = h.transpose(1, 2).reshape(b, t, d)
        h = f.linear(h, out_w, out_b) if lean else attn.out_proj(h)
        if train:
            h = layer.dropout(h)
        return h if pre else layer.layer_norm(x + h) - x
    if name == FFN:
        h = layer.final_layer_norm(x) if pre else x
        h = _feed_forward(layer.feed_forward, h, lean)
        return h if pre else layer.final_layer_norm(x + h) - x
    raise KeyError(f"a wav2vec2 layer has no block {name!r}")


def _feed_forward(ff: Any, x: torch.Tensor, lean: bool) -> torch.Tensor:
    """torchaudio's ``FeedForward``: intermediate_dense, GELU, intermediate_dropout,
    output_dense, output_dropout. ``lean`` (grad disabled, eval mode): on :func:`lean_linears`,
    in chunks of the intermediate width, each chunk's GELU output multiplied into the output
    projection and accumulated (the same sum in another order; see :data:`FFN_CHUNK`)."""
    if not lean or ff.training:  # training-mode dropout draws as the module itself draws them
        return ff(x)
    f = torch.nn.functional
    w1, b1, w2, b2 = lean_linears(ff)  # (C, in, c), (C, c), (C, c, out), (out,)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.addmm(b2, f.gelu(torch.addmm(b1[0], rows, w1[0])), w2[0])
    for i in range(1, w1.shape[0]):
        out.addmm_(f.gelu(torch.addmm(b1[i], rows, w1[i])), w2[i])
    return out.view(*x.shape[:-1], out.shape[-1])


# Intermediate columns per feed-forward chunk. MKL's single-thread GEMM of a few tens of rows
# into 3072 columns (wav2vec2 base) ran at 121-127 GFLOP/s on the 2-core Xeon where the same
# work in 768-column pieces ran at 155-175, and the whole block (both projections and GELU) at
# 42-160 rows was 6-19% faster chunked, equal at 256 rows, and from 4% slower to 6% faster at
# 512-2048 (``benchmarks/scale.py``: the tens of rows are what blank-skip leaves the later layers).
FFN_CHUNK = 768


_LEAN_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, tuple[torch.Tensor, ...]]] = (
    weakref.WeakKeyDictionary()
)


def lean_linears(module: Any) -> tuple[torch.Tensor, ...]:
    """A wav2vec2 ``SelfAttention`` or ``FeedForward``'s Linear weights for inference, as
    ``(weight, bias)`` pairs whose weight is an ``(in, out)`` contiguous matrix seen transposed
    (``F.linear`` then reads it row-major; at ~40 frames a 3072 -> 768 projection took 1.27 ms
    against 1.94 ms on the stored ``(out, in)`` layout, and large inputs are no slower).

    * ``SelfAttention``: q, k, v fused into one projection (q, k, v in that order along the
      output; its weight stored ``(D, 3D)``), then out_proj.
    * ``FeedForward``: intermediate_dense and output_dense in :data:`FFN_CHUNK`-column
      chunks of the intermediate width: ``(C, in, c)`` and ``(C, c, out)`` contiguous weights,
      ``(C, c)`` and ``(out,)`` biases.

    Cached per module without grad, rebuilt when a parameter changes (version counter,
    storage, device: the Conformer's keys, :func:`dyncli.models.conformer._version`). Called
    with grad enabled they are built afresh, from the parameters.
    """
    if torch.is_grad_enabled() or torch.compiler.is_exporting():  # (no cache in a graph)
        return _prepare_linears(module)
    key = tuple(_version(store[name]) for store, name in _slots(module))
    hit = _LEAN_CACHE.get(module)
    if hit is not None and hit[0] == key:
        return hit[1]
    weights = _prepare_linears(module)
    _LEAN_CACHE[module] = (key, weights)
    return weights


def _prepare_linears(module: Any) -> tuple[torch.Tensor, ...]:
    def lean(weight: torch.Tensor) -> torch.Tensor:
        return weight.t().contiguous().t()

    if hasattr(module, "q_proj"):
        projections = (module.q_proj, module.k_proj, module.v_proj)
        qkv_w = torch.cat([p.weight for p in projections])
        qkv_b = torch.cat([p.bias for p in projections])
        out = module.out_proj
        return lean(qkv_w), qkv_b, lean(out.weight), out.bias
    first, second = module.intermediate_dense, module.output_dense
    width = first.out_features
    chunks = width // FFN_CHUNK if width > FFN_CHUNK and width % FFN_CHUNK == 0 else 1
    c = width // chunks
    w1 = first.weight.view(chunks, c, -1).transpose(1, 2).contiguous()  # (C, in, c)
    b1 = first.bias.view(chunks, c).clone()
    w2 = second.weight.t().contiguous().view(chunks, c, -1)  # (C, c, out)
    return w1, b1, w2, second.bias


def from_torchaudio(
    state_dict: dict[str, torch.Tensor], config: Wav2Vec2Config, vocab_size: int
) -> Wav2Vec2CTC:
    """A model from a torchaudio ``Wav2Vec2Model`` state dict (with its ``aux`` CTC head) and
    the factory configuration it was built with; names are mapped part by part."""
    model = Wav2Vec2CTC(config, vocab_size)
    prefixes = (
        ("encoder.feature_projection.", "feature_projection."),
        ("encoder.transformer.pos_conv_embed.", "pos_conv_embed."),
        ("encoder.transformer.layer_norm.", "encoder_norm."),
        ("encoder.transformer.layers.", "layers."),
        ("aux.", "head."),
        ("feature_extractor.", "feature_extractor."),
    )
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for old, new in prefixes:
            if key.startswith(old):
                mapped[new + key[len(old) :]] = value
                break
        else:
            raise UsageError(f"torchaudio state dict: no place for {key!r}")
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"torchaudio state dict does not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model


def build_wav2vec2_ctc(config: Wav2Vec2Config, vocab_size: int) -> Wav2Vec2CTC:
    if config.encoder_embed_dim % config.encoder_num_heads:
        raise UsageError(
            f"encoder_embed_dim ({config.encoder_embed_dim}) must be divisible by "
            f"encoder_num_heads ({config.encoder_num_heads})"
        )
    return Wav2Vec2CTC(config, vocab_size)
