"""FLOP counting (dyncli.measure.flops): fvcore with our handles, checked against an
independent count."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dyncli.measure import flops
from dyncli.measure.flops import FlopCountError, FlopTable, count_flops, flops_by_operator
from dyncli.models.config import CONFORMER_PRESETS
from dyncli.models.conformer import build_conformer_ctc

VOCAB = 11
SAMPLES = 8000  # 1 s at 8 kHz: 24 encoder frames
# fvcore's estimates for ops that FlopCounterMode does not count at all, and the STFT, which
# FlopCounterMode does not count either (aten::_fft_r2c has no formula there).
NOT_IN_FLOP_COUNTER = {"layer_norm", "batch_norm", "group_norm", "instance_norm", "stft"}


@pytest.fixture()
def model() -> Any:
    torch.manual_seed(0)
    return build_conformer_ctc(CONFORMER_PRESETS["tiny"], VOCAB).eval()


class Whole(torch.nn.Module):
    """Waveform -> log-probs through the model's own forward (batch 1)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(wave, lengths)[0]


class Encoder(torch.nn.Module):
    """Embedded input (1, T, D) -> log-probs: every layer, then the CTC head."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.model.num_layers):
            x = self.model.run_layer(i, x, None)
        return self.model.log_probs(x)


def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kw: Any):
    """FlopCounterMode formula (2 FLOPs per multiply-add) for the fused CPU attention kernel,
    which it has no formula for: Q @ K^T and attn @ V."""
    *batch, tq, e = query_shape
    tk, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * tq * tk * (e + ev)


@contextlib.contextmanager
def _module_layers(conformer: Any) -> Iterator[None]:
    """Run every Conformer layer through torchaudio's modules (the reference path)."""
    original = conformer.ConformerCTC.run_layer

    def run_layer(self: Any, index: int, x: torch.Tensor, pad_mask: Any, gates: Any = None):
        assert gates is None
        return conformer.conformer_layer_reference(self.layers[index], x, pad_mask)

    conformer.ConformerCTC.run_layer = run_layer
    try:
        yield
    finally:
        conformer.ConformerCTC.run_layer = original


def _flop_counter_macs(fn: Any, *args: Any) -> int:
    """Multiply-adds by torch.utils.flop_counter (its FLOPs / 2), CPU attention kernel mapped.

    An independent count in two ways: another counter, and another implementation of the
    layer: torchaudio's modules (nn.MultiheadAttention, Conv1d, BatchNorm1d) instead of the
    eval-mode functional path fvcore traces."""
    from dyncli.models import conformer

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with (
        torch.inference_mode(),
        FlopCounterMode(display=False, custom_mapping=mapping) as fc,
        _module_layers(conformer),
    ):
        fn(*args)
    total = fc.get_total_flops()
    assert total % 2 == 0
    return total // 2


def _traced_ops(module: torch.nn.Module, inputs: tuple[Any, ...]) -> set[str]:
    """The op kinds in a jit trace of ``module(*inputs)`` (what fvcore sees)."""
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer and torch.jit deprecation warnings
        traced = torch.jit.trace(module, inputs, check_trace=False)
    return {node.kind() for node in traced.inlined_graph.nodes()}


def _comparable(by_op: dict[str, int]) -> int:
    return sum(n for op, n in by_op.items() if op not in NOT_IN_FLOP_COUNTER)


def test_encoder_agrees_with_torch_flop_counter(model: Any) -> None:
    table = FlopTable(model)
    frames = table.encoder_frames(SAMPLES)
    x = torch.randn(1, frames, model.config.d_model)
    by_op = flops_by_operator(Encoder(model), (x,))
    assert by_op["scaled_dot_product_attention"] > 0  # attention is counted, not skipped
    reference = _flop_counter_macs(Encoder(model), x)
    assert reference > 0
    assert abs(_comparable(by_op) - reference) <= 0.02 * reference
    # The table's parts add up to the same count as the whole encoder traced at once.
    layers = sum(table.layer(i, frames) for i in range(model.num_layers))
    assert layers + table.head(frames) == sum(by_op.values())


def test_whole_model_agrees_with_torch_flop_counter(model: Any) -> None:
    """Front end included; compared without the STFT, which FlopCounterMode does not count."""
    wave, lengths = torch.randn(1, SAMPLES), torch.tensor([SAMPLES])
    by_op = flops_by_operator(Whole(model), (wave, lengths))
    assert by_op["stft"] > 0 and by_op["matmul"] > 0  # FFT and mel filterbank both counted
    reference = _flop_counter_macs(Whole(model), wave, lengths)
    assert abs(_comparable(by_op) - reference) <= 0.02 * reference
    # static = front end + every layer at full length + head = the whole model traced at once.
    table = FlopTable(model)
    assert (
        table.static(SAMPLES) == sum(by_op.values()) == count_flops(Whole(model), (wave, lengths))
    )


def test_layer_flops_grow_with_frames_and_are_cached(model: Any, monkeypatch: Any) -> None:
    table = FlopTable(model)
    d, n = model.config.d_model, 20
    one, two = table.layer(0, n), table.layer(0, 2 * n)
    # Every term is linear in frames except attention, 2 * T^2 * D multiply-adds:
    # f(2n) - 2 f(n) = 2 (2n)^2 D - 2 * 2 n^2 D = 4 n^2 D.
    assert two - 2 * one == 4 * n * n * d
    assert table.layer(2, n) == one  # identical layers, identical counts

    traced: list[Any] = []
    real = flops.count_flops

    def counting(module: torch.nn.Module, inputs: tuple[Any, ...]) -> int:
        traced.append(module)
        return real(module, inputs)

    monkeypatch.setattr(flops, "count_flops", counting)
    assert table.layer(0, n) == one and table.layer(0, 2 * n) == two
    assert traced == []  # served from the cache, no new trace
    table.layer(0, 3 * n)
    assert traced == []  # a new size comes from the verified polynomial, no trace
    table.frontend(8000)
    assert len(traced) == 1  # a part without a polynomial is traced per size
    assert table.layer(0, 0) == 0 and table.head(0) == 0


def test_heads_count_their_projection(model: Any) -> None:
    d = model.config.d_model
    model.exit_heads = torch.nn.ModuleDict({"2": torch.nn.Linear(d, VOCAB)})
    table = FlopTable(model)
    # log-softmax is element-wise: not counted.
    assert table.exit_head(2, 30) == d * VOCAB * 30
    assert table.head(30) == d * VOCAB * 30
    with pytest.raises(KeyError):
        table.exit_head(1, 30)


def test_counting_restores_training_mode(model: Any) -> None:
    model.train()
    table = FlopTable(model)
    table.layer(0, 10)
    table.encoder_frames(SAMPLES)
    assert all(m.training for m in model.modules())


def test_encoder_frames_match_the_model(model: Any) -> None:
    table = FlopTable(model)
    for samples in (100, SAMPLES, 12345):  # 100: shorter than the front end's minimum
        with torch.inference_mode():
            log_probs, _ = model(torch.randn(1, samples), torch.tensor([samples]))
        assert table.encoder_frames(samples) == log_probs.shape[1]


def test_stft_convention() -> None:
    """A real signal: n_fft * log2(n_fft) multiply-adds per frame."""

    class Stft(torch.nn.Module):
        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            window = torch.hann_window(200)
            spec = torch.stft(wave, 256, 80, 200, window, center=False, return_complex=True)
            return spec.abs()

    frames = 1 + (8000 - 256) // 80
    assert flops_by_operator(Stft(), (torch.randn(1, 8000),)) == {"stft": frames * 256 * 8}


def test_conformer_attention_is_plain_sdpa(model: Any) -> None:
    """torchaudio's MultiheadAttention (batch_first=False) is traced as linear + SDPA."""
    kinds = _traced_ops(flops._Layer(model, 0), (torch.zeros(1, 12, 32),))
    assert "aten::scaled_dot_product_attention" in kinds
    assert "aten::_native_multi_head_attention" not in kinds


class _Attend(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize(
    ("module", "fused_op"),
    [
        (_Attend(), "aten::_native_multi_head_attention"),
        (
            torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=True),
            "aten::_transformer_encoder_layer_fwd",
        ),
    ],
)
def test_fused_fast_paths_count_like_the_unfused_path(module: Any, fused_op: str) -> None:
    """PyTorch's fused eval-mode kernels count exactly what the same layer counts op by op."""
    module.eval()
    x = torch.randn(2, 15, 32)
    assert fused_op in _traced_ops(module, (x,))
    fused = flops_by_operator(module, (x,))
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        unfused = flops_by_operator(module, (x,))
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
    assert fused == unfused
    assert fused["scaled_dot_product_attention"] == 2 * 15 * 15 * 2 * 32


def test_unsupported_matmul_op_raises() -> None:
    lstm = torch.nn.LSTM(8, 8).eval()  # aten::lstm: matrix work, no handle
    with pytest.raises(FlopCountError, match="aten::lstm"):
        count_flops(lstm, (torch.randn(5, 1, 8),))


def test_elementwise_ops_are_skipped_quietly(caplog: Any) -> None:
    act = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.SiLU(), torch.nn.Softmax(-1))
    assert count_flops(act.eval(), (torch.randn(3, 8),)) == 3 * 8 * 4
    assert not caplog.records


@pytest.mark.parametrize(
    ("op", "matmul"),
    [
        ("aten::linear", True),
        ("aten::baddbmm", True),
        ("aten::_convolution_mode", True),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", True),
        ("aten::fft_rfft", True),
        ("aten::silu", False),
        ("aten::cummax", False),
        ("aten::upsample_linear1d", False),
        ("aten::log_softmax", False),
    ],
)
def test_carries_matmul(op: str, matmul: bool) -> None:
    assert flops.carries_matmul(op) is matmul


def test_fitted_layer_polynomial_equals_fvcore_at_other_sizes() -> None:
    """The table's verified quadratic gives fvcore's own count at sizes it never fitted on."""
    import torch

    from dyncli.measure.flops import FlopTable, count_flops
    from dyncli.models.config import CONFORMER_PRESETS
    from dyncli.models.conformer import build_conformer_ctc

    model = build_conformer_ctc(CONFORMER_PRESETS["tiny"], 11).eval()
    table = FlopTable(model)

    for frames in (1, 3, 100, 151):
        x = torch.zeros(1, frames, model.head.in_features)
        assert table.layer(1, frames) == count_flops(flops._Layer(model, 1), (x,))
    assert table._poly("layer", 1) is not None  # the fast path was taken
