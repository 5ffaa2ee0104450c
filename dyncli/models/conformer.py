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

Under ``torch.inference_mode`` each layer's inference function runs as a TorchScript trace
(:class:`LeanTraces`): the same ops, dispatched from C++ instead of Python, which cuts a layer's
time at the tens of frames blank-skip leaves by about a third. ``DYNCLI_EAGER=1`` turns it off.
"""

from __future__ import annotations

import os
import warnings
import weakref
from typing import Any

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
    return _layer_inference(layer, x, pad_mask, *lean_weights(layer))


def _layer_inference(
    layer: ConformerLayer,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    *w: torch.Tensor,
) -> torch.Tensor:
    """The layer on prepared weights ``w`` (:func:`lean_weights`); LayerNorms from the module."""
    f = torch.nn.functional
    d = x.shape[-1]
    ffn1, conv, attn, ffn2 = w[0:4], w[4:10], w[10:14], w[14:18]
    x = torch.add(x, _ffn_inference(layer.ffn1.sequential, x, *ffn1), alpha=0.5)
    if layer.convolution_first:
        x = x + _conv_inference(layer, x, pad_mask, *conv)
    ln = layer.self_attn_layer_norm
    h = f.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)
    b, t, _ = h.shape
    heads = layer.self_attn.num_heads
    q, k, v = (
        f.linear(h, attn[0], attn[1]).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    ).unbind(0)  # each (B, H, T, Dh)
    mask = None if pad_mask is None else ~pad_mask[:, None, None, :]
    h = f.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + f.linear(h.transpose(1, 2).reshape(b, t, d), attn[2], attn[3])
    if not layer.convolution_first:
        x = x + _conv_inference(layer, x, pad_mask, *conv)
    x = torch.add(x, _ffn_inference(layer.ffn2.sequential, x, *ffn2), alpha=0.5)
    ln = layer.final_layer_norm
    return f.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)


def _ffn_inference(
    seq: torch.nn.Sequential,
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    f = torch.nn.functional
    norm = seq[0]
    assert isinstance(norm, torch.nn.LayerNorm)
    h = f.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return f.linear(f.silu(f.linear(h, w1, b1)), w2, b2)


def _conv_inference(
    layer: ConformerLayer,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    pw1: torch.Tensor,
    pw1_b: torch.Tensor,
    dw: torch.Tensor,
    shift: torch.Tensor,
    pw2: torch.Tensor,
    pw2_b: torch.Tensor,
) -> torch.Tensor:
    """The convolution module in (B, T, C) layout: pointwise convolutions as linear maps, the
    depthwise convolution as a dot product over a sliding window (``unfold`` + ``vecdot``),
    with BatchNorm folded into its weights and shift (:func:`lean_weights`). Same maths as the
    modules, a fraction of the per-call overhead at small T (the oneDNN depthwise kernel alone
    costs ~60 us per call)."""
    f = torch.nn.functional
    ln = layer.conv_module.layer_norm
    h = f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    h = f.glu(f.linear(h, pw1, pw1_b), dim=-1)  # (B, T, C)
    if pad_mask is not None:
        h = h.masked_fill(pad_mask.unsqueeze(-1), 0.0)
    k = dw.shape[0]
    pad = (k - 1) // 2
    # (B, T, k, C) view: the channel axis stays innermost (stride 1), so the product runs on
    # contiguous rows; reducing over a trailing k of stride C was 2-2.7x slower at T = 8..160.
    window = f.pad(h, (0, 0, pad, pad)).unfold(1, k, 1).transpose(2, 3)
    h = torch.linalg.vecdot(window, dw, dim=2) + shift
    norm = layer.conv_module.sequential[3]
    if not isinstance(norm, torch.nn.BatchNorm1d):  # a GroupNorm: not folded
        h = norm(h.transpose(1, 2)).transpose(1, 2)
    return f.linear(f.silu(h), pw2, pw2_b)


_LEAN_CACHE: weakref.WeakKeyDictionary[ConformerLayer, tuple[Any, tuple[torch.Tensor, ...]]] = (
    weakref.WeakKeyDictionary()
)


def lean_weights(layer: ConformerLayer) -> tuple[torch.Tensor, ...]:
    """A layer's weights prepared for inference, 18 tensors in :func:`_layer_inference`'s order.

    * Linear weights as ``(in, out)`` contiguous matrices, passed to ``F.linear`` transposed: the
      GEMM then reads its right operand row-major. With the stored ``(out, in)`` layout a
      288 -> 144 projection at 16 frames took 82 us, prepared 22 us (the feed-forward second
      projections; other shapes gain less).
    * BatchNorm folded into the depthwise kernel: ``dw * scale`` as ``(k, C)``, and one shift,
      ``(dw_bias - mean) * scale + beta``.

    Without grad they are cached per layer and rebuilt when a parameter or buffer changes
    (version counter, storage or device); with grad enabled they are rebuilt on every call so
    gradients reach the parameters.
    """
    if torch.is_grad_enabled():
        return _prepare(layer)
    key = tuple(_version(t) for t in (*layer.parameters(), *layer.buffers()))
    hit = _LEAN_CACHE.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1]
    weights = _prepare(layer)
    _LEAN_CACHE[layer] = (key, weights)
    return weights


def _version(t: torch.Tensor) -> tuple[int, int, torch.device]:
    try:
        version = t._version
    except RuntimeError:  # an inference tensor: no version counter
        version = -1
    return version, t.data_ptr(), t.device


def _prepare(layer: ConformerLayer) -> tuple[torch.Tensor, ...]:
    def linear(lin: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(lin, (torch.nn.Linear, torch.nn.Conv1d)) and lin.bias is not None
        weight = lin.weight.squeeze(-1) if isinstance(lin, torch.nn.Conv1d) else lin.weight
        return weight.t().contiguous().t(), lin.bias

    def ffn(seq: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        assert isinstance(seq, torch.nn.Sequential)
        return (*linear(seq[1]), *linear(seq[4]))

    seq = layer.conv_module.sequential
    dw, norm = seq[2], seq[3]
    assert isinstance(dw, torch.nn.Conv1d)
    kernel = dw.weight.squeeze(1).t()  # (k, C)
    bias = dw.bias if dw.bias is not None else torch.zeros_like(kernel[0])
    if isinstance(norm, torch.nn.BatchNorm1d):
        assert norm.running_var is not None and norm.running_mean is not None
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        kernel = kernel * scale
        shift = (bias - norm.running_mean) * scale + norm.bias
    else:
        shift = bias
    mha = layer.self_attn
    in_proj = (mha.in_proj_weight.t().contiguous().t(), mha.in_proj_bias)
    return (
        *ffn(layer.ffn1.sequential),
        *linear(seq[0]),
        kernel.contiguous(),
        shift,
        *linear(seq[5]),
        *in_proj,
        *linear(mha.out_proj),
        *ffn(layer.ffn2.sequential),
    )


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


class _LeanLayer(torch.nn.Module):
    """:func:`conformer_layer_inference` of one layer as a module, for tracing."""

    def __init__(self, layer: ConformerLayer, masked: bool) -> None:
        super().__init__()
        self.layer = layer
        self.masked = masked

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """``(x, *weights)``, or ``(x, pad_mask, *weights)`` when built with ``masked``."""
        if self.masked:
            return _layer_inference(self.layer, x, args[0], *args[1:])
        return _layer_inference(self.layer, x, None, *args)


class LeanTraces:
    """TorchScript traces of :func:`conformer_layer_inference`, one per layer and input kind.

    Why: at batch size 1 a layer on a few tens of frames costs mostly per-op Python dispatch
    (about 40 ops), not arithmetic, so a blank-skip suffix on a quarter of the frames took over
    half a full layer's time. A trace runs the same ops from C++: same kernels, same results.

    * Traced lazily on the first call (~60 ms a layer), with the shapes symbolic: one trace serves
      every length. A trace shares the layer's parameters and buffers (in-place updates, such as
      an optimizer step between dev scorings, are seen); it is keyed by device, dtype and
      whether a padding mask is given, and held weakly by the layer.
    * Used only under ``torch.inference_mode``, and never while something else traces the model
      or intercepts ops (fvcore and ``FlopCounterMode`` count FLOPs on the eager ops); training
      runs the module path.
    * ``torch.jit.trace`` is deprecated in favour of ``torch.compile``, which on the CPU needs a
      C++ toolchain and compiles for tens of seconds; for the pinned torch the trace is kept,
      and if tracing fails the layer runs eagerly (as with ``DYNCLI_EAGER=1``).
    """

    def __init__(self) -> None:
        self._traces: weakref.WeakKeyDictionary[ConformerLayer, dict[tuple[Any, ...], Any]] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def applies(layer: ConformerLayer) -> bool:
        return (
            not layer.training
            and torch.is_inference_mode_enabled()
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            # A dispatch or function mode (FlopCounterMode, a device audit) wants every op.
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and os.environ.get("DYNCLI_EAGER", "") in ("", "0")
        )

    def __call__(
        self, layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        key = (x.device, x.dtype, pad_mask is not None)
        per_layer = self._traces.setdefault(layer, {})
        fn = per_layer.get(key)
        if fn is None:
            fn = per_layer[key] = self._trace(layer, x, pad_mask)
        weights = lean_weights(layer)
        if fn is False:
            return _layer_inference(layer, x, pad_mask, *weights)
        return fn(x, *weights) if pad_mask is None else fn(x, pad_mask, *weights)

    @staticmethod
    def _trace(layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None) -> Any:
        masks = () if pad_mask is None else (pad_mask,)
        example = (x, *masks, *lean_weights(layer))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the deprecation notice and tracer warnings
                return torch.jit.trace(
                    _LeanLayer(layer, pad_mask is not None), example, check_trace=False
                )
        except Exception:  # noqa: BLE001 - any failure means: run eagerly
            return False


LEAN_TRACES = LeanTraces()


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
        if LEAN_TRACES.applies(layer):
            return LEAN_TRACES(layer, x, pad_mask)
        return conformer_layer_inference(layer, x, pad_mask)


def build_conformer_ctc(config: ConformerConfig, vocab_size: int) -> ConformerCTC:
    """Factory: every setting comes from ``config``; see ``CONFORMER_PRESETS`` for presets."""
    if config.d_model % config.num_heads:
        raise UsageError(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})"
        )
    return ConformerCTC(config, vocab_size)
