"""The built-in pre-LN Transformer backbone: one definition pinned to torch's layer, named
blocks, exit heads through the final norm, every policy, FLOPs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dyncli.measure import flops
from dyncli.measure.flops import FlopTable, flops_by_operator
from dyncli.methods.blank_skip import BlankSkipConfig
from dyncli.methods.blank_skip.policy import BlankSkip
from dyncli.methods.early_exit import EarlyExitConfig
from dyncli.methods.early_exit.policy import EarlyExit
from dyncli.methods.gates import GatesConfig
from dyncli.methods.gates.policy import GatePolicy
from dyncli.methods.gates.predictor import attach_gates
from dyncli.methods.static import StaticPolicy
from dyncli.models.config import TRANSFORMER_PRESETS
from dyncli.models.transformer import transformer_layer
from dyncli.registry import manager as plugins

CFG = TRANSFORMER_PRESETS["tiny"]


def build(vocab: int = 7, dropout: float | None = None) -> Any:
    import dataclasses

    torch.manual_seed(0)
    cfg = CFG if dropout is None else dataclasses.replace(CFG, dropout=dropout)
    return plugins.get_backbone("transformer").build(cfg, vocab)


@pytest.mark.parametrize("masked", [False, True])
def test_layer_equals_torch_transformer_encoder_layer(masked: bool) -> None:
    model = build().eval()
    x = torch.randn(2, 13, CFG.d_model)
    pad = torch.arange(13)[None, :] >= torch.tensor([[13], [9]]) if masked else None
    keep = slice(None) if pad is None else ~pad
    for layer in model.layers:
        with torch.inference_mode():
            ref = layer(x, src_key_padding_mask=pad)
            got = transformer_layer(layer, x, pad)
        torch.testing.assert_close(got[keep], ref[keep], atol=2e-5, rtol=1e-5)


def test_training_mode_equals_the_module_with_gradients() -> None:
    model = build(dropout=0.0).train()
    x = torch.randn(2, 11, CFG.d_model)
    layer = model.layers[0]
    ref = layer(x)
    ref.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    got = transformer_layer(layer, x, None)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    got.square().sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-4, msg=name)


@torch.inference_mode()
def test_batched_equals_single_and_exits_read_the_final_norm() -> None:
    model = build().eval()
    model.attach_exits([1])
    waves = [torch.randn(4000) * 0.1, torch.randn(7000) * 0.1]
    batch = torch.zeros(2, 7000)
    batch[0, :4000], batch[1] = waves[0], waves[1]
    out, lens = model(batch, torch.tensor([4000, 7000]))
    single, _ = model(waves[0][None], torch.tensor([4000]))
    torch.testing.assert_close(out[0, : int(lens[0])], single[0], atol=1e-5, rtol=1e-4)
    x = torch.randn(1, 8, CFG.d_model)
    expected = torch.log_softmax(model.exit_heads["1"](model.final_norm(x)), dim=-1)
    torch.testing.assert_close(model.exit_log_probs(1, x), expected)
    assert not torch.allclose(
        model.exit_log_probs(1, x), torch.log_softmax(model.exit_heads["1"](x), dim=-1)
    )


@torch.inference_mode()
def test_policies_off_equal_static() -> None:
    model = build().eval()
    model.attach_exits([1])
    attach_gates(model, "global")
    with torch.no_grad():
        for net in model.gate_predictor.nets:
            net[2].bias.fill_(8.0)  # every gate open
    x = torch.randn(2, 12, CFG.d_model)
    lengths = torch.tensor([12, 8])
    static = StaticPolicy().encode(model, x, lengths).log_probs
    never_blank = BlankSkip(BlankSkipConfig(threshold=1.0, layer=1, neighbours=0))
    never_exit = EarlyExit(EarlyExitConfig(threshold=0.0, criterion="entropy"))
    for policy in (never_blank, never_exit, GatePolicy(GatesConfig(threshold=0.5))):
        got = policy.encode(model, x, lengths).log_probs
        torch.testing.assert_close(got[0], static[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1, :8], static[1, :8], atol=1e-5, rtol=1e-5)


def _attention(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kw: Any):
    *batch, tq, e = query_shape
    return 2 * math.prod(batch) * tq * key_shape[-2] * (e + value_shape[-1])


def test_flops_match_torch_flop_counter_within_2_percent() -> None:
    """fvcore on dyncli's layer against torch.utils.flop_counter on torch's own module (another
    counter, another implementation); norms are left out (FlopCounterMode does not count them)."""
    model = build().eval()
    table = FlopTable(model)
    frames = 20
    x = torch.randn(1, frames, CFG.d_model)
    layer = model.layers[0]
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        layer.train()  # the module's plain path (eval takes a fused kernel the counter skips)
        layer.dropout.p = layer.dropout1.p = layer.dropout2.p = 0.0
        layer(x)
    layer.eval()
    reference = fc.get_total_flops() // 2

    by_op = flops_by_operator(flops._Layer(model, 0), (x,))
    counted = sum(n for op, n in by_op.items() if op != "layer_norm")
    assert by_op["scaled_dot_product_attention"] > 0
    assert abs(counted - reference) <= 0.02 * reference
    blocks = table.block(0, "attn", frames) + table.block(0, "ffn", frames)
    assert blocks == table.layer(0, frames) == sum(by_op.values())


def test_train_convert_and_profile_a_transformer(tmp_path) -> None:
    import json

    from tests.conftest import invoke_cli, tone_manifest

    data = tone_manifest(tmp_path)
    static, dyn, gated = tmp_path / "s.ckpt", tmp_path / "d.ckpt", tmp_path / "g.ckpt"
    common = ["--train", data, "--dev", data, "--max-steps", "1", "--epochs", "1"]
    result = invoke_cli(
        "train", "--backbone", "transformer", "--preset", "tiny", "--tokenizer", "char",
        "-o", static, *common, "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke_cli("convert", static, "-o", dyn, "--exits", "1", *common, "--threads", "1")
    assert result.exit_code == 0, result.output
    result = invoke_cli(
        "convert", static, "-o", gated, "--method", "gates", *common, "--threads", "1"
    )
    assert result.exit_code == 0, result.output
    report = tmp_path / "p.json"
    result = invoke_cli(
        "profile", dyn, "--data", data, "--policy", "all", "--models", gated, "--repeats", "1",
        "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policies = {(r.get("model"), r["policy"]) for r in json.loads(report.read_text())["rows"]}
    assert {("d.ckpt", "blank-skip"), ("d.ckpt", "early-exit-entropy")} <= policies
    assert ("g.ckpt", "gates") in policies
