"""FLOPs of the path an utterance actually executes, counted by fvcore (for ``dyncli profile``).

Unit: **fvcore FLOPs, one multiply-add counts as one FLOP** (a ``(T, K) @ (K, N)`` product is
``T * K * N``). Tools that count two FLOPs per multiply-add (``torch.utils.flop_counter``,
most papers) report twice these figures.

What is counted: every op that does matrix or convolution work (linear, matmul, mm, bmm,
baddbmm, addmm, einsum, convolutions, attention, the STFT), plus fvcore's own estimates for
normalisation layers (layer norm: 5 per element with an affine transform, 4 without; batch norm
in eval: 2 per element with affine, 1 without). Element-wise ops (add, mul, SiLU, GLU,
softmax, log-softmax, log, exp), data movement (gather, index, cat, transpose) and reductions
are not counted: fvcore lists them as unsupported and they are skipped quietly. An op that
*does* carry matrix work and has no handle makes :func:`count_flops` raise
:class:`FlopCountError` instead of silently counting zero.

fvcore's defaults miss several ops our backbones run; :data:`EXTRA_HANDLES` adds them:

* ``aten::scaled_dot_product_attention``: ``Q @ K^T`` and ``attn @ V``, that is
  ``B * H * Tq * Tk * (E + Ev)`` multiply-adds (``2 * B * H * Tq * Tk * Dh`` when the head
  widths match). torchaudio's ``ConformerLayer`` calls ``nn.MultiheadAttention`` with
  ``batch_first=False``, which never takes PyTorch's fused fast path, so in the trace its
  attention is ``aten::linear`` (in/out projections) + this op.
* ``aten::_native_multi_head_attention``: the fused ``nn.MultiheadAttention`` fast path
  (``batch_first=True``, eval mode, e.g. in a plugin backbone); projections + attention as above.
* ``aten::_transformer_encoder_layer_fwd``: the fused ``nn.TransformerEncoderLayer`` fast path
  (eval mode); projections, attention, feed-forward and its two layer norms, split by operator
  exactly as fvcore counts the same layer run op by op.
* ``aten::stft``: an FFT of ``n = n_fft`` points is counted as a radix-2 FFT: ``n/2 * log2(n)``
  butterflies, each one complex multiply = 4 real multiply-adds, so ``2 * n * log2(n)``; a real
  input (what the log-mel front end feeds it) needs half of that, ``n * log2(n)`` per frame.
  The window multiply and ``|X|^2`` are element-wise and not counted, like every element-wise
  op. (``torch.utils.flop_counter`` does not count FFTs at all.)
* ``aten::_convolution_mode`` (``padding="same"``/``"valid"``), ``aten::conv{1,2,3}d``,
  ``aten::convolution``, ``aten::conv_transpose{1,2,3}d``: fvcore's convolution formula.
* ``aten::linalg_vecdot``: one multiply-add per reduced element (the Conformer's depthwise
  convolution in eval mode; reported under "conv").
* ``aten::addmm_`` (in place; reported under ``addmm``), ``aten::baddbmm``, ``aten::addbmm``,
  ``aten::mv``, ``aten::addmv``, ``aten::dot``, ``aten::vdot``: the products (bias terms not
  counted, as fvcore does for ``addmm``).

Cost: fvcore jit-traces the module on every count (tens of milliseconds for one layer of the
demo model on one CPU thread, more on a busy machine), so :class:`FlopTable` caches each part
by its input size: FLOPs depend only on shapes, never on values. For layers and heads it goes
further: a Transformer/Conformer layer's count is a polynomial of degree 2 in the frame count
(projections, feed-forward and convolutions are linear in T, attention scores quadratic), so
the table counts each layer at three sizes, fits that polynomial exactly (integer
coefficients), and checks it against fvcore at further held-out sizes. Only a layer whose
counts pass the check is evaluated by the polynomial; any other layer is traced at every size
it runs on.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch

from dyncli.errors import DyncliError
from dyncli.models.base import CTCEncoder

# An fvcore op handle: (jit input values, jit output values) -> a count, or a Counter by operator.
Handle = Callable[[list[Any], list[Any]], Any]


class FlopCountError(DyncliError):
    """A model runs an op that does matrix work but that no FLOP handle knows how to count."""


# Ops (namespace stripped) that do matrix, convolution, attention, recurrent or FFT work: one of
# these left unsupported would make the count silently low.
_MATMUL_OPS = re.compile(
    r"(^|_)(mm|bmm|addmm|addbmm|baddbmm|matmul|mv|addmv|dot|vdot|vecdot|inner|tensordot|einsum|linear"
    r"|bilinear|trilinear|cdist|stft|istft)(_|$)"
    r"|conv(olution|_tbc|_transpose|\dd)|attention|transformer|fft|lstm|gru|rnn"
)


@functools.cache
def _fvcore_nn() -> Any:
    """``fvcore.nn``, imported without the deprecation warnings its import triggers
    (it ``torch.jit.script``-s a loss function at import time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import fvcore.nn
        import fvcore.nn.jit_handles
    return fvcore.nn


def carries_matmul(op: str) -> bool:
    """True for an op name (``aten::linear``) that does matrix, convolution or FFT work."""
    return bool(_MATMUL_OPS.search(op.split("::")[-1]))


def _shape(value: Any) -> list[int]:
    shape = _fvcore_nn().jit_handles.get_shape(value)
    if shape is None:
        raise FlopCountError(f"cannot count FLOPs: an input of unknown shape ({value.type()})")
    return [int(s) for s in shape]


def _is_complex(value: Any) -> bool:
    scalar = value.type().scalarType() if isinstance(value.type(), torch._C.TensorType) else None
    return scalar is not None and scalar.startswith("Complex")


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """(..., Tq, E) queries, (..., Tk, E) keys, (..., Tk, Ev) values: Q @ K^T and attn @ V."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _native_mha_flop(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """Fused ``nn.MultiheadAttention``: (B, Tq, D) query, (B, Tk, D) key and value."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    d = q[-1]
    qkv, proj = _shape(inputs[5]), _shape(inputs[7])  # (3D, D), (D, D)
    rows_q, rows_k = math.prod(q[:-1]), math.prod(k[:-1])
    per_proj = (qkv[0] // 3) * qkv[1]
    linear = rows_q * per_proj + 2 * rows_k * per_proj + rows_q * proj[0] * proj[1]
    attention = math.prod(q[:-2]) * q[-2] * k[-2] * 2 * d
    return Counter({"linear": linear, "scaled_dot_product_attention": attention})


def _transformer_layer_flop(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """Fused ``nn.TransformerEncoderLayer`` on (B, T, D), split as fvcore splits the unfused one."""
    src = _shape(inputs[0])
    rows, t, d = math.prod(src[:-1]), src[-2], src[-1]
    weights = [_shape(inputs[i]) for i in (3, 5, 14, 16)]  # qkv, out proj, ffn 1, ffn 2
    linear = rows * sum(w[0] * w[1] for w in weights)
    attention = math.prod(src[:-2]) * t * t * 2 * d
    # Affine or not, decided as fvcore decides it for aten::layer_norm.
    affine = _fvcore_nn().jit_handles.get_shape(inputs[10]) is not None
    norms = 2 * rows * d * (5 if affine else 4)  # fvcore's layer-norm estimate, two norms
    return Counter(
        {"linear": linear, "scaled_dot_product_attention": attention, "layer_norm": norms}
    )


def _stft_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """``n_fft * log2(n_fft)`` multiply-adds per frame of a real signal, twice that if complex."""
    n_fft = int(inputs[1].toIValue())
    shape = _shape(outputs[0])
    if not _is_complex(outputs[0]):
        shape = shape[:-1]  # return_complex=False: (..., freq, frames, 2)
    ffts = math.prod(shape) // shape[-2]
    per_fft = (2 if _is_complex(inputs[0]) else 1) * n_fft * math.log2(n_fft)
    return round(ffts * per_fft)


def _conv_handle(transposed: bool | None) -> Handle:
    """fvcore's convolution formula; ``transposed=None`` reads it from ``aten::convolution``."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
        conv_flop_count = _fvcore_nn().jit_handles.conv_flop_count
        is_t = bool(inputs[6].toIValue()) if transposed is None else transposed
        x, w, out = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
        return Counter({"conv": int(conv_flop_count(x, w, out, transposed=is_t))})

    return handle


def _batched_product_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """``baddbmm``/``addbmm``: (b, n, m) @ (b, m, p) -> b * n * m * p."""
    b, n, m = _shape(inputs[1])
    return b * n * m * _shape(inputs[2])[-1]


def _addmm_inplace_flop(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``out.addmm_(a, b)``: (n, m) @ (m, p) -> n * m * p, reported under ``addmm`` as fvcore
    reports the out-of-place op (wav2vec2's chunked feed-forward accumulates with it)."""
    n, m = _shape(inputs[1])
    return Counter({"addmm": n * m * _shape(inputs[2])[-1]})


def _mv_flop(first: int) -> Handle:
    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        return math.prod(_shape(inputs[first]))

    return handle


def _vecdot_flop(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``linalg_vecdot(x, y, dim)``: one multiply-add per reduced element of each output.

    The Conformer's depthwise convolution runs as a vecdot over a sliding window in eval mode,
    so it is reported under "conv" (k * C * T, exactly the convolution's count)."""
    x = _shape(inputs[0])
    dim = int(inputs[2].toIValue()) if len(inputs) > 2 else -1
    return Counter({"conv": math.prod(_shape(outputs[0])) * x[dim]})


EXTRA_HANDLES: dict[str, Handle] = {
    "aten::linalg_vecdot": _vecdot_flop,
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "aten::_native_multi_head_attention": _native_mha_flop,
    "aten::_transformer_encoder_layer_fwd": _transformer_layer_flop,
    "aten::stft": _stft_flop,
    "aten::_convolution_mode": _conv_handle(False),
    "aten::conv1d": _conv_handle(False),
    "aten::conv2d": _conv_handle(False),
    "aten::conv3d": _conv_handle(False),
    "aten::conv_transpose1d": _conv_handle(True),
    "aten::conv_transpose2d": _conv_handle(True),
    "aten::conv_transpose3d": _conv_handle(True),
    "aten::convolution": _conv_handle(None),
    "aten::baddbmm": _batched_product_flop,
    "aten::addbmm": _batched_product_flop,
    "aten::addmm_": _addmm_inplace_flop,
    "aten::mv": _mv_flop(0),
    "aten::addmv": _mv_flop(1),
    "aten::dot": _mv_flop(0),
    "aten::vdot": _mv_flop(0),
}


def flops_by_operator(module: torch.nn.Module, inputs: tuple[Any, ...]) -> dict[str, int]:
    """fvcore FLOPs of ``module(*inputs)`` by operator (``linear``, ``conv``, ``stft``, ...).

    The module is traced as it is (put it in eval mode first), under ``torch.inference_mode``.
    Raises :class:`FlopCountError` if an op that does matrix work has no handle.
    """
    analysis = (
        _fvcore_nn()
        .FlopCountAnalysis(module, inputs)
        .set_op_handle(**EXTRA_HANDLES)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    with torch.inference_mode():
        counts = analysis.by_operator()
    missing = {op: n for op, n in analysis.unsupported_ops().items() if carries_matmul(op)}
    if missing:
        listed = ", ".join(f"{op} ({n}x)" for op, n in sorted(missing.items()))
        raise FlopCountError(
            f"cannot count FLOPs of {type(module).__name__}: no FLOP handle for {listed}, "
            "which does matrix work; add one to dyncli.measure.flops.EXTRA_HANDLES"
        )
    return {op: int(n) for op, n in counts.items()}


def count_flops(module: torch.nn.Module, inputs: tuple[Any, ...]) -> int:
    """fvcore FLOPs (one multiply-add = one FLOP) of ``module(*inputs)``, with
    :data:`EXTRA_HANDLES` registered.

    Raises :class:`FlopCountError` if an op that carries matmul/conv work is unsupported;
    element-wise ops fvcore does not count are skipped quietly.
    """
    return sum(flops_by_operator(module, inputs).values())


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration; every sub-module's previous mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _Frontend(torch.nn.Module):
    def __init__(self, model: CTCEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, frames = self.model.features(wave, lengths)
        x, _ = self.model.embed(feats, frames)
        return x


class _Layer(torch.nn.Module):
    def __init__(self, model: CTCEncoder, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.run_layer(self.index, x, None)


class _Block(torch.nn.Module):
    def __init__(self, model: CTCEncoder, index: int, name: str) -> None:
        super().__init__()
        self.model = model
        self.index = index
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.run_block(self.index, self.name, x, None)


class _GateNet(torch.nn.Module):
    def __init__(self, model: CTCEncoder, index: int) -> None:
        super().__init__()
        gp: Any = getattr(model, "gate_predictor", None)
        if gp is None:
            raise KeyError("the model has no gate predictor")
        self.net: torch.nn.Module = gp.nets[max(index, 0)]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(pooled)
        return out


class _Head(torch.nn.Module):
    def __init__(self, model: CTCEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_probs(x)


class _ExitHead(torch.nn.Module):
    def __init__(self, model: CTCEncoder, layer: int) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.exit_log_probs(self.layer, x)


class FlopTable:
    """Per-part FLOP counts of one model, cached by input size (FLOPs depend only on shapes).

    Every part is counted for one utterance (batch 1, no padding), on the model's own code path
    (``features``/``embed``, ``run_layer``, ``log_probs``, ``exit_log_probs``), in eval mode:
    the model's train/eval modes are restored afterwards. A part run on 0 frames costs 0.
    Each new (part, size) costs one fvcore trace (see the module docstring); repeats are free.
    """

    def __init__(self, model: CTCEncoder) -> None:
        self.model = model
        param = next(model.parameters())
        self._device = param.device
        self._dtype = param.dtype if param.is_floating_point() else torch.float32
        self._width = model.head.in_features
        self._cache: dict[tuple[str, int, int], int] = {}
        self._frames: dict[int, int] = {}
        self._polys: dict[tuple[str, int], tuple[Fraction, Fraction, Fraction] | None] = {}

    FIT_POINTS = (8, 16, 32)
    CHECK_POINTS = (5, 27, 61)

    def _poly(self, part: str, index: int) -> tuple[Fraction, Fraction, Fraction] | None:
        """Exact ``a*T^2 + b*T + c`` of a per-frame part, if fvcore's counts confirm it."""
        key = (part, index)
        if key not in self._polys:
            t0, t1, t2 = self.FIT_POINTS
            y0, y1, y2 = (self._exact(part, index, t) for t in self.FIT_POINTS)
            # Newton divided differences: exact rational coefficients from three points.
            d01 = Fraction(y1 - y0, t1 - t0)
            d12 = Fraction(y2 - y1, t2 - t1)
            a = (d12 - d01) / (t2 - t0)
            b = d01 - a * (t0 + t1)
            c = y0 - a * t0 * t0 - b * t0
            poly = (a, b, c)
            ok = all(_eval(poly, t) == self._exact(part, index, t) for t in self.CHECK_POINTS)
            self._polys[key] = poly if ok else None
        return self._polys[key]

    def _exact(self, part: str, index: int, frames: int) -> int:
        return self._count((part, index, frames), lambda: self._hidden(frames))

    def _per_frame_part(self, part: str, index: int, frames: int) -> int:
        if frames <= 0:
            return 0
        poly = self._poly(part, index)
        value = -1 if poly is None else _eval(poly, frames)
        return value if value >= 0 else self._exact(part, index, frames)

    def _count(self, key: tuple[str, int, int], build: Callable[[], tuple[Any, ...]]) -> int:
        if key not in self._cache:
            part, index, size = key
            if part == "frontend":
                module: torch.nn.Module = _Frontend(self.model)
            elif part == "layer":
                module = _Layer(self.model, index)
            elif part == "predictor":
                module = _GateNet(self.model, index)
            elif part.startswith("block:"):
                module = _Block(self.model, index, part.removeprefix("block:"))
            elif part == "exit":
                module = _ExitHead(self.model, index)
            else:
                module = _Head(self.model)
            with _eval_mode(self.model), torch.inference_mode():
                self._cache[key] = count_flops(module, build())
        return self._cache[key]

    def _wave(self, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        wave = torch.zeros(1, samples, device=self._device)
        return wave, torch.tensor([samples], device=self._device)

    def _hidden(self, frames: int) -> tuple[torch.Tensor]:
        return (torch.zeros(1, frames, self._width, device=self._device, dtype=self._dtype),)

    def frontend(self, samples: int) -> int:
        """Features (log-mel, STFT included) + embed (conv subsampling): one wave of ``samples``."""
        return self._count(("frontend", 0, samples), lambda: self._wave(samples))

    def layer(self, index: int, frames: int) -> int:
        """Encoder layer ``index`` (0-based) on (1, frames, D), no padding mask."""
        if not 0 <= index < self.model.num_layers:
            raise IndexError(f"layer {index} outside 0..{self.model.num_layers - 1}")
        return self._per_frame_part("layer", index, frames)

    def block(self, index: int, name: str, frames: int) -> int:
        """Block ``name`` of layer ``index`` (its residual branch f(x); ``norm``: the layer's
        closing norm) on (1, frames, D). A layer's count is the sum of its blocks' and its
        norm's (the residual additions are element-wise: not counted)."""
        if not 0 <= index < self.model.num_layers:
            raise IndexError(f"layer {index} outside 0..{self.model.num_layers - 1}")
        closing = self.model.closing_block(index)
        if name not in (*self.model.blocks(index), *((closing,) if closing else ())):
            raise KeyError(f"layer {index} has no block {name!r}")
        return self._per_frame_part(f"block:{name}", index, frames)

    def predictor(self, index: int) -> int:
        """The gate predictor of layer ``index`` (``-1``: the global predictor's whole plan) on
        one utterance's pooled input; the pooling itself is element-wise (not counted)."""
        return self._count(
            ("predictor", index, 1),
            lambda: (torch.zeros(1, self._width, device=self._device, dtype=self._dtype),),
        )

    def head(self, frames: int) -> int:
        """Final CTC head + log-softmax (``model.log_probs``) on (1, frames, D)."""
        return self._per_frame_part("head", 0, frames)

    def exit_head(self, layer: int, frames: int) -> int:
        """Exit head after 1-based ``layer`` + log-softmax (``model.exit_log_probs``)."""
        if str(layer) not in self.model.exit_heads:
            raise KeyError(f"the model has no exit head after layer {layer}")
        return self._per_frame_part("exit", layer, frames)

    def encoder_frames(self, samples: int) -> int:
        """Encoder frames (T after subsampling) of a wave of ``samples`` samples."""
        if samples not in self._frames:
            with _eval_mode(self.model), torch.inference_mode():
                feats, frames = self.model.features(*self._wave(samples))
                x, _ = self.model.embed(feats, frames)
            self._frames[samples] = int(x.shape[1])
        return self._frames[samples]

    def static(self, samples: int) -> int:
        """The full-depth model on one wave: front end + every layer at full length + head."""
        frames = self.encoder_frames(samples)
        layers = sum(self.layer(i, frames) for i in range(self.model.num_layers))
        return self.frontend(samples) + layers + self.head(frames)


def _eval(poly: tuple[Fraction, Fraction, Fraction], t: int) -> int:
    a, b, c = poly
    value = a * t * t + b * t + c
    if value.denominator != 1:  # a count is an integer; a fractional value means no fit
        return -1
    return int(value)
