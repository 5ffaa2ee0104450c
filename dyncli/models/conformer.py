"""Conformer CTC encoder built from torchaudio's Conformer layers.

torchaudio's ``ConformerLayer`` holds the parameters and sub-modules; the layer's maths is
stated once, here, as named residual blocks (:func:`conformer_layer`): ``ffn1``, ``attn``,
``conv``, ``ffn2`` (each ``x + scale * f(x)``, run or bypassed, and the place a gate acts),
then the closing LayerNorm. Why not the module's own forward: torchaudio's convolution module
does not mask padded frames, so in a padded batch the depthwise convolution would mix padding
into real frames. Here padded frames are zeroed right before the depthwise convolution, which
makes batched and single-utterance outputs equal. A test pins the definition to torchaudio's
modules (:func:`conformer_layer_reference`).

Training and inference run the same function on different weights: in training the
parameters themselves, with dropout and BatchNorm on batch statistics; in inference weights
prepared once (:func:`lean_weights`: GEMM-friendly layout, BatchNorm folded into the depthwise
kernel) and the functional ops called directly. At the small sizes a skipped layer leaves behind
(tens of frames), a layer's time is dominated by per-op overhead; trimming it is what lets
wall-clock savings follow FLOP savings.

Under ``torch.inference_mode`` each layer runs as a TorchScript trace of that function
(:class:`LeanTraces`): the same ops, dispatched from C++ instead of Python, which cuts a layer's
time at the tens of frames blank-skip leaves. ``DYNCLI_EAGER=1`` turns it off.
"""

from __future__ import annotations

import os
import warnings
import weakref
from typing import Any

import torch
from torchaudio.models.conformer import ConformerLayer

from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder, Gates, apply_gate
from dyncli.models.components import LogMelFrontend
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


# The residual blocks of a layer, by name. Each is ``x + scale * f(x)`` (scale 0.5 for the two
# macaron feed-forward blocks); ``norm`` is the layer's closing LayerNorm, which always runs.
FFN1, CONV, ATTN, FFN2, NORM = "ffn1", "conv", "attn", "ffn2", "norm"
# The blocks a gate may close (I3D gates attention and feed-forward modules).
GATEABLE = (FFN1, ATTN, FFN2)

# The residual branch's scale per block (the macaron feed-forward blocks add half).
SCALES = {FFN1: 0.5, CONV: 1.0, ATTN: 1.0, FFN2: 0.5}


def block_order(layer: ConformerLayer) -> tuple[str, ...]:
    """The residual blocks of ``layer`` in execution order (``norm`` not included)."""
    return (FFN1, CONV, ATTN, FFN2) if layer.convolution_first else (FFN1, ATTN, CONV, FFN2)


def conformer_layer(
    layer: ConformerLayer,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    w: tuple[torch.Tensor, ...],
    gates: Gates | None = None,
    train: bool = False,
) -> torch.Tensor:
    """The Conformer layer, the one definition every path runs: (B, T, D) -> (B, T, D).

    ``w`` are the layer's weights from :func:`layer_weights` (``train``) or :func:`lean_weights`
    (inference: BatchNorm folded into the depthwise kernel). ``train`` applies dropout and runs
    BatchNorm on batch statistics, as the module's training mode does. ``pad_mask`` (B, T) is
    True on padded frames (or None): padded frames are zeroed before the depthwise convolution,
    which torchaudio's module does not do, so padded batches equal single utterances.

    Gates (``gates``, see :data:`Gates`): a block with gate g computes ``x + g * f(x)``. In
    training g is a float (straight-through Gumbel sample) and every block runs, so the gate's
    gradient exists. In inference g is a decision: a closed block is not computed; in a batch
    only the utterances whose gate is open run it (:func:`dyncli.models.base.apply_gate`).
    """
    f = torch.nn.functional
    for name in block_order(layer):
        gate = True if gates is None else gates.get(name, True)

        def branch(rows: torch.Tensor | None, name: str = name, h: torch.Tensor = x) -> Any:
            if rows is None:
                return block(layer, name, h, pad_mask, w, train)
            sub = None if pad_mask is None else pad_mask[rows]
            return block(layer, name, h[rows], sub, w, train)

        x = apply_gate(x, gate, branch, SCALES[name])
    ln = layer.final_layer_norm
    return f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def block(
    layer: ConformerLayer,
    name: str,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    w: tuple[torch.Tensor, ...],
    train: bool = False,
) -> torch.Tensor:
    """The residual branch f(x) of block ``name`` (added at :data:`SCALES`); ``norm``: the
    closing LayerNorm itself (it replaces x rather than adding to it)."""
    f = torch.nn.functional
    if name == FFN1:
        return _ffn(layer.ffn1.sequential, x, *w[0:4], train=train)
    if name == CONV:
        return _conv(layer, x, pad_mask, *w[4:10], train=train)
    if name == ATTN:
        return _attention(layer, x, pad_mask, *w[10:14], train=train)
    if name == FFN2:
        return _ffn(layer.ffn2.sequential, x, *w[14:18], train=train)
    if name == NORM:
        ln = layer.final_layer_norm
        return f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    raise KeyError(f"a Conformer layer has no block {name!r}")


def _ffn(
    seq: torch.nn.Sequential,
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    train: bool,
) -> torch.Tensor:
    """LayerNorm, Linear, SiLU, dropout, Linear, dropout (torchaudio's feed-forward module)."""
    f = torch.nn.functional
    norm, drop = seq[0], seq[3]
    assert isinstance(norm, torch.nn.LayerNorm) and isinstance(drop, torch.nn.Dropout)
    h = f.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    h = f.silu(f.linear(h, w1, b1))
    if train:
        h = f.dropout(h, drop.p, True)
    h = f.linear(h, w2, b2)
    return f.dropout(h, drop.p, True) if train else h


def _attention(
    layer: ConformerLayer,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    in_w: torch.Tensor,
    in_b: torch.Tensor,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
    *,
    train: bool,
) -> torch.Tensor:
    """LayerNorm and multi-head self-attention on the packed in-projection (what
    ``nn.MultiheadAttention`` computes, its attention dropout included), then dropout."""
    f = torch.nn.functional
    ln = layer.self_attn_layer_norm
    h = f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    b, t, d = h.shape
    heads = layer.self_attn.num_heads
    if pad_mask is None and b == 1 and torch.compiler.is_exporting():
        return _exported_attention(h, heads, in_w, in_b, out_w, out_b)
    q, k, v = (
        f.linear(h, in_w, in_b).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    ).unbind(0)  # each (B, H, T, Dh)
    mask = None if pad_mask is None else ~pad_mask[:, None, None, :]
    p = layer.self_attn.dropout if train else 0.0
    h = f.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    h = f.linear(h.transpose(1, 2).reshape(b, t, d), out_w, out_b)
    return f.dropout(h, layer.self_attn_dropout.p, True) if train else h


def _exported_attention(
    h: torch.Tensor,
    heads: int,
    in_w: torch.Tensor,
    in_b: torch.Tensor,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
) -> torch.Tensor:
    """What :func:`_attention` computes at batch 1 without padding, in the fewest graph nodes:
    the softmax scale folded into the query projection (constants in the graph), heads split
    along the first axis (one ``Split``, no ``Squeeze``), and no SDPA decomposition (which
    re-derives K's transposed shape at run time). In an exported graph a suffix of layers on a
    few kept frames costs mostly per-node dispatch, so the node count is the cost."""
    f = torch.nn.functional
    _, t, d = h.shape
    dh = d // heads
    s = dh**-0.5  # on the query rows; folded into constants when the graph is optimised
    w, bias = torch.cat([in_w[:d] * s, in_w[d:]]), torch.cat([in_b[:d] * s, in_b[d:]])
    qkv = f.linear(h[0], w, bias)  # (T, 3D)
    q, k, v = qkv.reshape(t, 3 * heads, dh).transpose(0, 1).split(heads)  # each (H, T, Dh)
    att = torch.matmul(torch.matmul(q, k.transpose(1, 2)).softmax(dim=-1), v)  # (H, T, Dh)
    return f.linear(att.transpose(0, 1).reshape(t, d), out_w, out_b)[None]


def _conv(
    layer: ConformerLayer,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    pw1: torch.Tensor,
    pw1_b: torch.Tensor,
    dw: torch.Tensor,
    shift: torch.Tensor,
    pw2: torch.Tensor,
    pw2_b: torch.Tensor,
    *,
    train: bool,
) -> torch.Tensor:
    """The convolution module in (B, T, C) layout: pointwise convolutions as linear maps, GLU,
    padding zeroed, depthwise convolution, norm, SiLU, pointwise, dropout.

    Inference: the depthwise convolution is a dot product over a sliding window (``unfold`` +
    ``vecdot``) with BatchNorm folded into ``dw`` and ``shift`` (:func:`lean_weights`); the
    oneDNN depthwise kernel alone costs ~60 us per call at tens of frames. Training: the
    convolution kernel (``dw`` unfolded, ``shift`` its bias), then the BatchNorm module on batch
    statistics."""
    f = torch.nn.functional
    ln = layer.conv_module.layer_norm
    seq = layer.conv_module.sequential
    norm = seq[3]
    h = f.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    h = f.glu(f.linear(h, pw1, pw1_b), dim=-1)  # (B, T, C)
    if pad_mask is not None:
        h = h.masked_fill(pad_mask.unsqueeze(-1), 0.0)
    k = dw.shape[0]
    pad = (k - 1) // 2
    if train:
        h = f.conv1d(h.transpose(1, 2), dw.t().unsqueeze(1), shift, padding=pad, groups=dw.shape[1])
        h = norm(h).transpose(1, 2)
    elif torch.compiler.is_exporting():
        h = f.conv1d(h.transpose(1, 2), dw.t().unsqueeze(1), shift, padding=pad, groups=dw.shape[1])
        h = h.transpose(1, 2)
        if not isinstance(norm, torch.nn.BatchNorm1d):
            h = norm(h.transpose(1, 2)).transpose(1, 2)
    else:
        # (B, T, k, C) view: the channel axis stays innermost (stride 1), so the product runs on
        # contiguous rows; reducing over a trailing k of stride C was 2-2.7x slower at T = 8..160.
        window = f.pad(h, (0, 0, pad, pad)).unfold(1, k, 1).transpose(2, 3)
        h = torch.linalg.vecdot(window, dw, dim=2) + shift
        if not isinstance(norm, torch.nn.BatchNorm1d):  # a GroupNorm: not folded
            h = norm(h.transpose(1, 2)).transpose(1, 2)
    h = f.linear(f.silu(h), pw2, pw2_b)
    drop = seq[6]
    assert isinstance(drop, torch.nn.Dropout)
    return f.dropout(h, drop.p, True) if train else h


def conformer_layer_reference(
    layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None
) -> torch.Tensor:
    """torchaudio's ``ConformerLayer`` run through its own modules, with the padding mask added
    before the depthwise convolution: the reference tests and ``benchmarks/layer_speed.py``
    check :func:`conformer_layer` against. No run path uses it."""
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


_LEAN_CACHE: weakref.WeakKeyDictionary[ConformerLayer, tuple[Any, tuple[torch.Tensor, ...]]] = (
    weakref.WeakKeyDictionary()
)


def lean_weights(layer: ConformerLayer) -> tuple[torch.Tensor, ...]:
    """A layer's weights prepared for inference, 18 tensors in :func:`conformer_layer`'s order.

    * Linear weights as ``(in, out)`` contiguous matrices, passed to ``F.linear`` transposed: the
      GEMM then reads its right operand row-major. With the stored ``(out, in)`` layout a
      288 -> 144 projection at 16 frames took 82 us, prepared 22 us (the feed-forward second
      projections; other shapes gain less).
    * BatchNorm folded into the depthwise kernel: ``dw * scale`` as ``(k, C)``, and one shift,
      ``(dw_bias - mean) * scale + beta``.

    Without grad they are cached per layer and rebuilt when a parameter or buffer changes
    (version counter, storage or device); with grad enabled they are rebuilt on every call so
    gradients reach the parameters, and so they are while a graph is exported (the cache key
    reads storage addresses, which an exported graph has not got).
    """
    if torch.is_grad_enabled() or torch.compiler.is_exporting():  # (an exported graph: no cache)
        return _prepare(layer, fold=True)
    key = tuple(_version(store[name]) for store, name in _slots(layer))
    hit = _LEAN_CACHE.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1]
    weights = _prepare(layer, fold=True)
    _LEAN_CACHE[layer] = (key, weights)
    return weights


_SLOTS: weakref.WeakKeyDictionary[ConformerLayer, list[tuple[dict[str, Any], str]]] = (
    weakref.WeakKeyDictionary()
)


def _slots(layer: ConformerLayer) -> list[tuple[dict[str, Any], str]]:
    """Where each parameter and buffer of ``layer`` lives: (the sub-module's ``_parameters`` or
    ``_buffers`` dict, name). Collected once per layer: walking the module tree on every call
    cost ~0.3 ms a layer, most of a layer's time at tens of frames. Reading through the dicts
    sees a parameter re-assigned as well as one changed in place."""
    hit = _SLOTS.get(layer)
    if hit is None:
        hit = [
            (store, name)
            for module in layer.modules()
            for store in (module._parameters, module._buffers)
            for name, t in store.items()
            if t is not None
        ]
        _SLOTS[layer] = hit
    return hit


def _version(t: torch.Tensor) -> tuple[int, int, torch.device]:
    try:
        version = t._version
    except RuntimeError:  # an inference tensor: no version counter
        version = -1
    return version, t.data_ptr(), t.device


def layer_weights(layer: ConformerLayer) -> tuple[torch.Tensor, ...]:
    """The layer's weights for training, in :func:`conformer_layer`'s order: views of the
    parameters (gradients reach them), the depthwise kernel as ``(k, C)`` and its bias,
    BatchNorm left to the module (it normalises with batch statistics in training)."""
    return _prepare(layer, fold=False)


def _prepare(layer: ConformerLayer, fold: bool) -> tuple[torch.Tensor, ...]:
    def linear(lin: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(lin, (torch.nn.Linear, torch.nn.Conv1d)) and lin.bias is not None
        weight = lin.weight.squeeze(-1) if isinstance(lin, torch.nn.Conv1d) else lin.weight
        return (weight.t().contiguous().t() if fold else weight), lin.bias

    def ffn(seq: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        assert isinstance(seq, torch.nn.Sequential)
        return (*linear(seq[1]), *linear(seq[4]))

    seq = layer.conv_module.sequential
    dw, norm = seq[2], seq[3]
    assert isinstance(dw, torch.nn.Conv1d)
    kernel = dw.weight.squeeze(1).t()  # (k, C)
    bias = dw.bias if dw.bias is not None else torch.zeros_like(kernel[0])
    if fold and isinstance(norm, torch.nn.BatchNorm1d):
        assert norm.running_var is not None and norm.running_mean is not None
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        kernel = kernel * scale
        shift = (bias - norm.running_mean) * scale + norm.bias
    else:
        shift = bias
    mha = layer.self_attn
    in_w = mha.in_proj_weight
    in_proj = (in_w.t().contiguous().t() if fold else in_w, mha.in_proj_bias)
    return (
        *ffn(layer.ffn1.sequential),
        *linear(seq[0]),
        kernel.contiguous() if fold else kernel,
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
    """:func:`conformer_layer` of one layer in inference, some blocks closed, for tracing."""

    def __init__(self, layer: ConformerLayer, masked: bool, closed: frozenset[str]) -> None:
        super().__init__()
        self.layer = layer
        self.masked = masked
        self.gates: Gates | None = dict.fromkeys(closed, False) or None

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """``(x, *weights)``, or ``(x, pad_mask, *weights)`` when built with ``masked``."""
        if self.masked:
            return conformer_layer(self.layer, x, args[0], args[1:], self.gates)
        return conformer_layer(self.layer, x, None, args, self.gates)


class LeanTraces:
    """TorchScript traces of :func:`conformer_layer` in inference, one per layer, input kind and
    set of closed blocks.

    Why: at batch size 1 a layer on a few tens of frames costs mostly per-op Python dispatch
    (about 40 ops), not arithmetic, so a blank-skip suffix on a quarter of the frames took over
    half a full layer's time. A trace runs the same ops from C++: same kernels, same results.

    * Traced lazily on the first call (~60 ms a layer), with the shapes symbolic: one trace serves
      every length. A trace shares the layer's parameters and buffers (in-place updates, such as
      an optimizer step between dev scorings, are seen); it is keyed by device, dtype, whether a
      padding mask is given and which blocks a gate closed for the whole batch (a closed block
      is not in the trace), and held weakly by the layer.
    * Used only under ``torch.inference_mode``, and never while something else traces the model
      or intercepts ops (fvcore and ``FlopCounterMode`` count FLOPs on the eager ops); training
      runs :func:`conformer_layer` eagerly.
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
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return False  # a graph being captured runs the layer's own ops
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
        self,
        layer: ConformerLayer,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        closed: frozenset[str] = frozenset(),
    ) -> torch.Tensor:
        key = (x.device, x.dtype, pad_mask is not None, closed)
        per_layer = self._traces.setdefault(layer, {})
        fn = per_layer.get(key)
        if fn is None:
            fn = per_layer[key] = self._trace(layer, x, pad_mask, closed)
        weights = lean_weights(layer)
        if fn is False:
            gates: Gates = dict.fromkeys(closed, False)
            return conformer_layer(layer, x, pad_mask, weights, gates)
        return fn(x, *weights) if pad_mask is None else fn(x, pad_mask, *weights)

    @staticmethod
    def _trace(
        layer: ConformerLayer, x: torch.Tensor, pad_mask: torch.Tensor | None, closed: frozenset
    ) -> Any:
        masks = () if pad_mask is None else (pad_mask,)
        example = (x, *masks, *lean_weights(layer))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the deprecation notice and tracer warnings
                module = _LeanLayer(layer, pad_mask is not None, closed)
                return torch.jit.trace(module, example, check_trace=False)
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

    def blocks(self, index: int) -> tuple[str, ...]:
        layer = self.layers[index]
        assert isinstance(layer, ConformerLayer)
        return block_order(layer)

    def closing_block(self, index: int) -> str | None:
        return NORM

    @property
    def gateable_blocks(self) -> tuple[str, ...]:
        return GATEABLE

    def run_layer(
        self,
        index: int,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        gates: Gates | None = None,
        positions: torch.Tensor | None = None,  # absolute positions only: not read
    ) -> torch.Tensor:
        layer = self.layers[index]
        assert isinstance(layer, ConformerLayer)
        if layer.training:
            return conformer_layer(layer, x, pad_mask, layer_weights(layer), gates, train=True)
        closed = _closed_for_all(gates) if LEAN_TRACES.applies(layer) else None
        if closed is not None:
            return LEAN_TRACES(layer, x, pad_mask, closed)
        return conformer_layer(layer, x, pad_mask, lean_weights(layer), gates)

    def run_block(
        self, index: int, name: str, x: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        layer = self.layers[index]
        assert isinstance(layer, ConformerLayer)
        train = layer.training
        w = layer_weights(layer) if train else lean_weights(layer)
        return block(layer, name, x, pad_mask, w, train)


def _closed_for_all(gates: Gates | None) -> frozenset[str] | None:
    """The blocks closed for the whole batch, if every gate decides the same for every
    utterance (None when some block is open for some utterances only, or gates are soft)."""
    if not gates:
        return frozenset()
    closed = set()
    for name, gate in gates.items():
        if isinstance(gate, bool):
            open_all, open_none = gate, not gate
        elif gate.is_floating_point():
            return None
        else:
            open_all, open_none = bool(gate.all()), not bool(gate.any())
        if open_none:
            closed.add(name)
        elif not open_all:
            return None
    return frozenset(closed)


def build_conformer_ctc(config: ConformerConfig, vocab_size: int) -> ConformerCTC:
    """Factory: every setting comes from ``config``; see ``CONFORMER_PRESETS`` for presets."""
    if config.d_model % config.num_heads:
        raise UsageError(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})"
        )
    return ConformerCTC(config, vocab_size)
