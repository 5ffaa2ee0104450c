"""wav2vec2 / HuBERT backbone: torchaudio's model, layers exposed one by one; static equals
torchaudio's forward; every policy; FLOPs; loading a torchaudio state dict."""

from __future__ import annotations

import dataclasses
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
from dyncli.models.config import WAV2VEC2_PRESETS
from dyncli.models.wav2vec2 import factory_kwargs, from_torchaudio
from dyncli.registry import manager as plugins

VOCAB = 7


def torchaudio_model(pre_ln: bool) -> tuple[Any, Any]:
    from torchaudio.models import wav2vec2_model

    cfg = dataclasses.replace(WAV2VEC2_PRESETS["tiny"], encoder_layer_norm_first=pre_ln)
    torch.manual_seed(0)
    ta = wav2vec2_model(**factory_kwargs(cfg), aux_num_out=VOCAB).eval()
    return ta, cfg


@pytest.mark.parametrize("pre_ln", [False, True])
@torch.inference_mode()
def test_static_equals_torchaudio_and_the_state_dict_loads(pre_ln: bool) -> None:
    ta, cfg = torchaudio_model(pre_ln)
    model = from_torchaudio(ta.state_dict(), cfg, VOCAB).eval()
    wave = torch.randn(1, 6000) * 0.1
    ref, ref_len = ta(wave, torch.tensor([6000]))
    got, got_len = model(wave, torch.tensor([6000]))
    assert got_len.tolist() == ref_len.tolist()
    torch.testing.assert_close(got, torch.log_softmax(ref, dim=-1), atol=2e-5, rtol=1e-4)
    # A padded batch: the same as torchaudio's own padded batch (its feature extractor and
    # positional convolution see the padding, so a batch is not single utterances here).
    batch = torch.zeros(2, 6000)
    batch[0, :4000], batch[1] = torch.randn(4000) * 0.1, wave[0]
    lengths = torch.tensor([4000, 6000])
    ref, ref_len = ta(batch, lengths)
    got, got_len = model(batch, lengths)
    for b, n in enumerate(ref_len.tolist()):
        torch.testing.assert_close(
            got[b, :n], torch.log_softmax(ref[b, :n], dim=-1), atol=2e-5, rtol=1e-4
        )


def test_unmatched_state_dict_is_refused() -> None:
    from dyncli.errors import UsageError

    ta, cfg = torchaudio_model(False)
    state = ta.state_dict()
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(UsageError, match="no place for 'encoder.extra.weight'"):
        from_torchaudio(state, cfg, VOCAB)


@pytest.mark.parametrize("pre_ln", [False, True])
@torch.inference_mode()
def test_policies_off_equal_static_and_exits_read_the_final_norm(pre_ln: bool) -> None:
    ta, cfg = torchaudio_model(pre_ln)
    model = from_torchaudio(ta.state_dict(), cfg, VOCAB).eval()
    model.attach_exits([1, 2])
    attach_gates(model, "local")
    with torch.no_grad():
        for net in model.gate_predictor.nets:
            net[2].bias.fill_(8.0)
    x, n = model.embed(*model.features(torch.randn(2, 5000) * 0.1, torch.tensor([5000, 3500])))
    static = StaticPolicy().encode(model, x, n).log_probs
    for policy in (
        BlankSkip(BlankSkipConfig(threshold=1.0, layer=1, neighbours=0)),
        EarlyExit(EarlyExitConfig(threshold=0.0, criterion="entropy")),
        GatePolicy(GatesConfig(threshold=0.5)),
    ):
        got = policy.encode(model, x, n).log_probs
        for b, m in enumerate(n.tolist()):
            torch.testing.assert_close(got[b, :m], static[b, :m], atol=1e-5, rtol=1e-5)
    h = torch.randn(1, 6, cfg.encoder_embed_dim)
    head_in = model.encoder_norm(h) if pre_ln else h  # pre-LN: the norm after the layers
    expected = torch.log_softmax(model.exit_heads["1"](head_in), dim=-1)
    torch.testing.assert_close(model.exit_log_probs(1, h), expected)


def test_a_closed_block_is_bypassed_with_its_norm() -> None:
    """Post-LN: closing a block skips the sub-layer and its LayerNorm (identity)."""
    ta, cfg = torchaudio_model(False)
    model = from_torchaudio(ta.state_dict(), cfg, VOCAB).eval()
    x = torch.randn(1, 9, cfg.encoder_embed_dim)
    with torch.inference_mode():
        both = model.run_layer(0, x, None, gates={"attn": False, "ffn": False})
        only_ffn = model.run_layer(0, x, None, gates={"attn": False})
    torch.testing.assert_close(both, x)
    layer = model.layers[0]
    torch.testing.assert_close(
        only_ffn, layer.final_layer_norm(x + layer.feed_forward(x)), atol=1e-5, rtol=1e-5
    )


def _attention(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kw: Any):
    *batch, tq, e = query_shape
    return 2 * math.prod(batch) * tq * key_shape[-2] * (e + value_shape[-1])


@pytest.mark.parametrize("wavlm", [False, True])
def test_flops_match_torch_flop_counter_within_2_percent(wavlm: bool) -> None:
    """fvcore on dyncli's path (front end with the positional convolution, every layer, head)
    against torch.utils.flop_counter on torchaudio's own forward; norms left out."""
    if wavlm:
        ta, model = wavlm_pair()
    else:
        ta, cfg = torchaudio_model(False)
        model = from_torchaudio(ta.state_dict(), cfg, VOCAB).eval()
    wave, lengths = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        if wavlm:
            ta(wave)  # torchaudio's WavLM takes no lengths
        else:
            ta(wave, lengths)
    reference = fc.get_total_flops() // 2

    class Whole(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, w: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return self.model(w, n)[0]

    by_op = flops_by_operator(Whole(), (wave, lengths))
    norms = ("layer_norm", "group_norm", "batch_norm", "instance_norm")
    counted = sum(v for op, v in by_op.items() if op not in norms)
    assert abs(counted - reference) <= 0.02 * reference, (counted, reference, by_op)
    table = FlopTable(model)
    frames = table.encoder_frames(8000)
    assert table.static(8000) == sum(by_op.values())
    assert table.block(0, "attn", frames) + table.block(0, "ffn", frames) == table.layer(0, frames)
    assert flops.carries_matmul("aten::conv1d")


def test_train_and_convert_a_wav2vec2(tmp_path) -> None:
    from tests.conftest import invoke_cli, tone_manifest

    data = tone_manifest(tmp_path)
    static, dyn = tmp_path / "s.ckpt", tmp_path / "d.ckpt"
    common = ["--train", data, "--dev", data, "--max-steps", "1", "--epochs", "1", "--threads", "1"]
    result = invoke_cli(
        "train", "--backbone", "wav2vec2", "--preset", "tiny", "--tokenizer", "char", "-o",
        static, *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke_cli(
        "convert", static, "-o", dyn, "--exits", "1,2", "--skip-layer", "1", *common
    )
    assert result.exit_code == 0, result.output
    result = invoke_cli("profile", dyn, "--data", data, "--policy", "all", "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert plugins.get_backbone("wav2vec2").config_cls.__name__ == "Wav2Vec2Config"


def wavlm_pair(pre_ln: bool = False) -> tuple[Any, Any]:
    from torchaudio.models import wavlm_model

    cfg = dataclasses.replace(
        WAV2VEC2_PRESETS["tiny"],
        wavlm=True,
        encoder_num_buckets=16,
        encoder_max_distance=64,
        encoder_layer_norm_first=pre_ln,
    )
    torch.manual_seed(0)
    ta = wavlm_model(**factory_kwargs(cfg), aux_num_out=VOCAB).eval()
    with torch.no_grad():
        ta.encoder.transformer.layers[0].attention.rel_attn_embed.weight.normal_(0, 2.0)
    return ta, from_torchaudio(ta.state_dict(), cfg, VOCAB).eval()


@pytest.mark.parametrize("pre_ln", [False, True])
@torch.inference_mode()
def test_wavlm_equals_torchaudio_with_the_bias_recomputed_per_layer(pre_ln: bool) -> None:
    """WavLM's relative position bias is made in the first layer and reused; dyncli recomputes
    it in every layer from the frame positions: the same output, and no state between layers."""
    ta, model = wavlm_pair(pre_ln)
    assert model.relative_positions
    batch = torch.randn(2, 6000) * 0.1
    lengths = torch.tensor([6000, 6000])
    for b in range(2):  # torchaudio's WavLM takes no lengths: one utterance at a time
        ref, _ = ta(batch[b : b + 1])
        got, _ = model(batch[b : b + 1], lengths[b : b + 1])
        torch.testing.assert_close(got, torch.log_softmax(ref, dim=-1), atol=2e-5, rtol=1e-4)
    # The bias matters: with a zero bias the layers compute something else.
    from dyncli.models.wav2vec2 import w2v_layer

    x, _ = model.embed(*model.features(batch[1:], lengths[1:]))
    bias = model.position_bias(x)
    assert bias is not None and bias.shape == (1, 2, x.shape[1], x.shape[1])
    with_bias = model.run_layer(1, x, None)
    torch.testing.assert_close(with_bias, w2v_layer(model.layers[1], x, None, None, bias))
    zero = w2v_layer(model.layers[1], x, None, None, torch.zeros_like(bias))
    assert not torch.allclose(zero, with_bias, atol=1e-4)


@torch.inference_mode()
def test_wavlm_policies_off_equal_static() -> None:
    from dyncli.methods.drop import DropConfig
    from dyncli.methods.drop.policy import DropLayers

    _, model = wavlm_pair()
    model.attach_exits([1, 2])
    attach_gates(model, "global")
    with torch.no_grad():
        for net in model.gate_predictor.nets:
            net[2].bias.fill_(8.0)
    x, n = model.embed(*model.features(torch.randn(1, 5000) * 0.1, torch.tensor([5000])))
    static = StaticPolicy().encode(model, x, n).log_probs
    for policy in (
        EarlyExit(EarlyExitConfig(threshold=0.0, criterion="entropy")),
        GatePolicy(GatesConfig(threshold=0.5)),
        DropLayers(DropConfig(threshold=3)),
    ):
        torch.testing.assert_close(policy.encode(model, x, n).log_probs, static)
    # Layers 2 and 3 without layer 1 (which holds the bucket embedding) still get their bias.
    out = DropLayers(DropConfig(threshold=1)).encode(model, x, n)
    assert [s[:2] for s in out.trace if s[0] == "layer"] == [("layer", 2)]
    keep_all = BlankSkip(BlankSkipConfig(threshold=1.0, layer=1, neighbours=0))
    torch.testing.assert_close(keep_all.encode(model, x, n).log_probs, static)


@torch.inference_mode()
def test_wavlm_frames_removed_keep_their_positions() -> None:
    """Blank-skip hands the kept frames' original positions to the later layers: each kept frame
    sees the rows and columns of the full sequence's bias that it owns."""
    from dyncli.models.wav2vec2 import w2v_layer

    _, model = wavlm_pair()
    x = torch.randn(1, 20, model.config.encoder_embed_dim)
    full = model.position_bias(x)
    assert full is not None
    torch.testing.assert_close(model.position_bias(x, torch.arange(20)[None, :]), full)
    idx = torch.tensor([0, 3, 4, 9, 15, 19])
    got = model.run_layer(1, x[:, idx], None, positions=idx[None, :])
    sub = full[:, :, idx][:, :, :, idx]
    torch.testing.assert_close(got, w2v_layer(model.layers[1], x[:, idx], None, None, sub))
    contiguous = model.run_layer(1, x[:, idx], None)  # what forgetting the positions gives
    assert not torch.allclose(contiguous, got, atol=1e-4)
    # Padded batches compact each utterance on its own and still match one at a time.
    model.attach_exits([1])
    with torch.no_grad():
        model.exit_heads["1"].bias[0] += 3.0
    xb = torch.randn(2, 24, model.config.encoder_embed_dim)
    lengths = torch.tensor([24, 17])
    lp = model.exit_log_probs(1, model.run_layer(0, xb, None))
    threshold = float(lp[0, :, 0].exp().median())
    policy = BlankSkip(BlankSkipConfig(threshold=threshold, layer=1, neighbours=0))
    batched = policy.encode(model, xb, lengths)
    assert 0 < int((batched.frame_layers == 1).sum()) < int(lengths.sum())
    for b, m in enumerate(lengths.tolist()):
        single = policy.encode(model, xb[b : b + 1, :m], lengths[b : b + 1])
        torch.testing.assert_close(
            batched.log_probs[b, :m], single.log_probs[0], atol=2e-5, rtol=1e-4
        )


def _reference_layer(layer: Any, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``EncoderLayer.forward`` with the additive padding mask its encoder makes."""
    b, t, _ = x.shape
    pad = torch.arange(t)[None, :] >= lengths[:, None]
    mask = (-10000.0 * pad[:, None, None, :].to(x.dtype)).expand(b, 1, t, t)
    return layer(x, attention_mask=mask)[0]


def _tiny_layer(pre_ln: bool) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    ta, cfg = torchaudio_model(pre_ln)
    model = from_torchaudio(ta.state_dict(), cfg, VOCAB).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 11, cfg.encoder_embed_dim)
    lengths = torch.tensor([11, 7])
    pad = torch.arange(11)[None, :] >= lengths[:, None]
    return model.layers[1], x, lengths, pad


@pytest.mark.parametrize("pre_ln", [False, True])
def test_lean_inference_path_equals_torchaudio_layer(pre_ln: bool) -> None:
    """Grad disabled, the blocks run on the prepared weights (q, k, v fused, (in, out)
    layout): the same output as torchaudio's layer, padded batch included."""
    from dyncli.models.wav2vec2 import _LEAN_CACHE, lean_linears, w2v_layer

    layer, x, lengths, pad = _tiny_layer(pre_ln)
    with torch.no_grad():
        reference = _reference_layer(layer, x, lengths)
        got = w2v_layer(layer, x, pad)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    for module in (layer.attention, layer.feed_forward):  # the lean path ran and cached
        assert module in _LEAN_CACHE
    qkv_w, qkv_b, out_w, _ = _LEAN_CACHE[layer.attention][1]
    d = x.shape[-1]
    assert qkv_w.shape == (3 * d, d) and qkv_w.t().is_contiguous() and out_w.t().is_contiguous()
    torch.testing.assert_close(qkv_w[d : 2 * d], layer.attention.k_proj.weight)
    torch.testing.assert_close(qkv_b[2 * d :], layer.attention.v_proj.bias)
    with torch.inference_mode():
        assert lean_linears(layer.feed_forward) is _LEAN_CACHE[layer.feed_forward][1]  # a hit
        torch.testing.assert_close(w2v_layer(layer, x, pad), reference, atol=1e-5, rtol=1e-5)
    # Dropout in training mode (grad still disabled): the same draws in the same places.
    layer.train()
    with torch.no_grad():
        torch.manual_seed(3)
        reference = _reference_layer(layer, x, lengths)
        torch.manual_seed(3)
        got = w2v_layer(layer, x, pad)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_chunked_feed_forward_equals_torchaudio_and_counts_the_same_flops(
    pre_ln: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean feed-forward in several chunks of the intermediate width (accumulated with
    ``addmm_``) gives torchaudio's output, and fvcore counts the same FLOPs as in one piece."""
    import dyncli.models.wav2vec2 as w2v
    from dyncli.measure.flops import count_flops

    layer, x, lengths, pad = _tiny_layer(pre_ln)
    width = layer.feed_forward.intermediate_dense.out_features

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ff = layer.feed_forward

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return w2v._feed_forward(self.ff, h, True)

    whole = count_flops(Block(), (x,))
    monkeypatch.setattr(w2v, "FFN_CHUNK", width // 4)
    w2v._LEAN_CACHE.pop(layer.feed_forward, None)  # prepared in one piece by the count above
    with torch.no_grad():
        reference = _reference_layer(layer, x, lengths)
        got = w2v.w2v_layer(layer, x, pad)
    w1, b1, w2, _ = w2v._LEAN_CACHE[layer.feed_forward][1]
    assert w1.shape[0] == b1.shape[0] == w2.shape[0] == 4  # the chunked weights ran
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    assert count_flops(Block(), (x,)) == whole > 0


def test_lean_weights_follow_a_weight_changed_in_place() -> None:
    from dyncli.models.wav2vec2 import w2v_layer

    layer, x, lengths, pad = _tiny_layer(False)
    with torch.no_grad():
        before = w2v_layer(layer, x, pad)
        layer.attention.k_proj.weight.mul_(1.5)
        layer.feed_forward.output_dense.bias.add_(0.25)
        after = w2v_layer(layer, x, pad)
        reference = _reference_layer(layer, x, lengths)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)
    # A parameter replaced outright (new storage) and a state dict loaded in place.
    ta, cfg = torchaudio_model(False)
    d = cfg.encoder_embed_dim
    layer.attention.out_proj.weight = torch.nn.Parameter(0.2 * torch.randn(d, d))
    with torch.no_grad():
        torch.testing.assert_close(
            w2v_layer(layer, x, pad), _reference_layer(layer, x, lengths), atol=1e-5, rtol=1e-5
        )
        layer.load_state_dict(ta.encoder.transformer.layers[1].state_dict())
        torch.testing.assert_close(
            w2v_layer(layer, x, pad),
            _reference_layer(ta.encoder.transformer.layers[1], x, lengths),
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("pre_ln", [False, True])
def test_with_grad_the_blocks_train_the_linear_parameters(pre_ln: bool) -> None:
    from dyncli.models.wav2vec2 import w2v_layer

    layer, x, lengths, pad = _tiny_layer(pre_ln)
    with torch.no_grad():
        w2v_layer(layer, x, pad)  # fills the inference cache, which training must not use
    layer.train()
    torch.manual_seed(5)
    reference = _reference_layer(layer, x, lengths)
    torch.manual_seed(5)
    got = w2v_layer(layer, x, pad)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    got.square().sum().backward()
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6
    for lin in linears:
        for p in (lin.weight, lin.bias):
            assert p.grad is not None and bool(p.grad.abs().sum() > 0)
