"""I3D gates: the block interface, closed blocks not computed, Gumbel straight-through training,
convert --method gates, the gates policy in profile, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dyncli.measure.flops import FlopTable
from dyncli.measure.sweep import _encoder_flops
from dyncli.methods.gates import GatesConfig
from dyncli.methods.gates.policy import GatePolicy
from dyncli.methods.gates.predictor import GatePredictor, attach_gates, gumbel_gates, predictor_of
from dyncli.methods.static import StaticPolicy
from dyncli.models.config import CONFORMER_PRESETS
from dyncli.models.conformer import build_conformer_ctc
from tests.conftest import invoke_cli, tone_manifest

CFG = CONFORMER_PRESETS["tiny"]
BLOCKS = ("ffn1", "attn", "ffn2")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gates")
    manifest = tone_manifest(root)
    return manifest


def gated_model(predictor: str = "local", closed: dict[int, set[str]] | None = None):
    """A tiny model whose gates are fixed by the predictor's bias: every block open except
    ``closed[layer]`` (input-independent, so tests know what the policy must decide)."""
    torch.manual_seed(0)
    model = build_conformer_ctc(CFG, 9).eval()
    gp = attach_gates(model, predictor)
    closed = closed or {}
    with torch.no_grad():
        for net in gp.nets:
            net[2].weight.zero_()
        for layer in range(model.num_layers):
            for j, name in enumerate(gp.blocks):
                bias = -8.0 if name in closed.get(layer, set()) else 8.0
                if predictor == "local":
                    gp.nets[layer][2].bias[j] = bias
                else:
                    gp.nets[0][2].bias[layer * len(gp.blocks) + j] = bias
    return model


def test_conformer_names_its_blocks_and_flops_add_up_per_block() -> None:
    model = build_conformer_ctc(CFG, 9).eval()
    assert model.blocks(0) == ("ffn1", "attn", "conv", "ffn2")
    assert model.gateable_blocks == BLOCKS
    table = FlopTable(model)
    for frames in (7, 20):
        parts = [table.block(1, name, frames) for name in (*model.blocks(1), "norm")]
        assert all(p > 0 for p in parts)
        assert sum(parts) == table.layer(1, frames)  # exact: fvcore integer counts
    with pytest.raises(KeyError):
        table.block(0, "nope", 5)


@pytest.mark.parametrize("predictor", ["local", "global"])
def test_all_gates_open_equals_the_static_model(predictor: str) -> None:
    model = gated_model(predictor)
    x = torch.randn(2, 13, CFG.d_model)
    lengths = torch.tensor([13, 9])
    with torch.inference_mode():
        gated = GatePolicy(GatesConfig(threshold=0.5)).encode(model, x, lengths)
        static = StaticPolicy().encode(model, x, lengths)
    torch.testing.assert_close(gated.log_probs[1, :9], static.log_probs[1, :9])
    torch.testing.assert_close(gated.log_probs[0], static.log_probs[0])
    assert [s for s in gated.trace if s[0] == "layer"] == [
        s for s in static.trace if s[0] == "layer"
    ]


@pytest.mark.parametrize("eager", [True, False])
def test_a_closed_block_is_not_computed(eager: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from dyncli.models import conformer

    monkeypatch.setenv("DYNCLI_EAGER", "1" if eager else "0")
    closed = {0: {"attn"}, 2: {"ffn1", "ffn2"}}
    model = gated_model("local", closed)
    calls: list[str] = []
    real_attention, real_ffn = conformer._attention, conformer._ffn

    def attention(*args, **kwargs):
        calls.append("attn")
        return real_attention(*args, **kwargs)

    def ffn(*args, **kwargs):
        calls.append("ffn")
        return real_ffn(*args, **kwargs)

    monkeypatch.setattr(conformer, "_attention", attention)
    monkeypatch.setattr(conformer, "_ffn", ffn)
    x = torch.randn(1, 11, CFG.d_model)
    with torch.inference_mode():
        out = GatePolicy(GatesConfig(threshold=0.5)).encode(model, x, torch.tensor([11]))
    # Eagerly, every open block is one call; a trace records the open blocks once per layer.
    assert calls.count("attn") == 2 and calls.count("ffn") == 2 * 3 - 2
    steps = [s[:2] for s in out.trace if s[0] != "gates"]
    assert ("block:attn", 0) not in steps and ("block:ffn1", 0) in steps
    assert ("block:ffn1", 2) not in steps and ("block:ffn2", 2) not in steps
    assert ("layer", 1) in steps  # every block of layer 1 ran: counted as the whole layer
    table = FlopTable(model)
    static = StaticPolicy().encode(model, x, torch.tensor([11]))
    saved = table.block(0, "attn", 11) + table.block(2, "ffn1", 11) + table.block(2, "ffn2", 11)
    predictor = sum(table.predictor(i) for i in range(model.num_layers))
    assert predictor > 0
    assert (
        _encoder_flops(table, out.trace) == _encoder_flops(table, static.trace) - saved + predictor
    )


def test_mixed_gates_in_a_batch_equal_each_utterance_alone() -> None:
    """Only the utterances whose gate is open run the block; the others bypass it."""
    model = build_conformer_ctc(CFG, 9).eval()
    x = torch.randn(2, 10, CFG.d_model)
    pad = torch.arange(10)[None, :] >= torch.tensor([[10], [7]])
    gates = {"attn": torch.tensor([True, False]), "ffn2": torch.tensor([False, True])}
    with torch.inference_mode():
        both = model.run_layer(0, x, pad, gates=gates)
        first = model.run_layer(0, x[:1], None, gates={"attn": True, "ffn2": False})
        second = model.run_layer(0, x[1:, :7], None, gates={"attn": False, "ffn2": True})
    torch.testing.assert_close(both[0], first[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(both[1, :7], second[0], atol=2e-5, rtol=1e-5)


def test_straight_through_gumbel_gradient_reaches_the_predictor() -> None:
    from dyncli.methods.gates.training import GatedPath
    from dyncli.training.objectives import ctc_loss

    torch.manual_seed(0)
    model = build_conformer_ctc(CFG, 9).train()
    gp = attach_gates(model, "local")
    with torch.no_grad():  # open probability ~0.5: both outcomes get sampled
        for net in gp.nets:
            net[2].bias.zero_()
    x = torch.randn(2, 15, CFG.d_model)
    lengths = torch.tensor([15, 12])
    path = GatedPath(temperature=1.0, generator=torch.Generator().manual_seed(0))
    student = path.run(model, x, lengths, frozen=False)
    assert student.gate_probs is not None and student.gate_probs.shape == (2, CFG.num_layers, 3)
    ctc_loss(student.final, lengths, [[1, 2], [3]]).backward()  # CTC alone, no cost term
    for layer in range(CFG.num_layers):
        weight = gp.nets[layer][0].weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    g = gumbel_gates(torch.zeros(1000), 1.0, torch.Generator().manual_seed(1))
    assert set(g.detach().unique().tolist()) == {0.0, 1.0}  # hard samples forward
    assert 0.4 < float(g.detach().mean()) < 0.6


def test_gated_checkpoint_round_trip(tmp_path: Path) -> None:
    from dyncli.data.text import CharTokenizer
    from dyncli.methods.gates.predictor import gates_method

    model = gated_model("global", {1: {"attn"}})
    tok = CharTokenizer.train(["one two"])
    method = gates_method("global", 0.5, 10.0, 1.0, 32)
    path = tmp_path / "g.ckpt"
    save_checkpoint(
        path,
        Checkpoint(model=model, tokenizer=tok, backbone="conformer", config=CFG, method=method),
    )
    loaded = load_checkpoint(path).model
    gp = predictor_of(loaded)
    assert isinstance(gp, GatePredictor) and gp.kind == "global"
    x = torch.randn(1, 8, CFG.d_model)
    with torch.inference_mode():
        a = GatePolicy(GatesConfig()).encode(model, x, torch.tensor([8]))
        b = GatePolicy(GatesConfig()).encode(loaded, x, torch.tensor([8]))
    torch.testing.assert_close(a.log_probs, b.log_probs)
    assert a.trace == b.trace and ("predictor", -1, [1]) in a.trace


def test_convert_gates_then_inspect_and_profile(tiny_ckpt, data, tmp_path) -> None:
    out = tmp_path / "g.ckpt"
    result = invoke_cli(
        "convert", tiny_ckpt, "-o", out, "--method", "gates", "--predictor", "global",
        "--target-modules", "0.6", "--train", data, "--dev", data, "--max-steps", "2",
        "--epochs", "1", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "gates open on dev" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.method is not None and ckpt.method["default_policy"] == "gates"
    gates = ckpt.method["gates"]
    assert gates["predictor"] == "global" and gates["target_modules"] == 0.6
    assert set(gates["open_rate"]) == set(BLOCKS)
    assert all(len(v) == CFG.num_layers for v in gates["open_rate"].values())
    shown = invoke_cli("inspect", out)
    assert shown.exit_code == 0 and "gate open: attn" in shown.output
    report = tmp_path / "p.json"
    result = invoke_cli(
        "profile", out, "--data", data, "--thresholds", "0,0.5,1", "--repeats", "1",
        "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["policy"] for r in rows] == ["gates"] * 3
    # threshold 1: every gate closed (p < 1), only the convolution blocks and norms run.
    assert rows[2]["flops_ratio"] < rows[0]["flops_ratio"]
    assert rows[0]["flops_ratio"] > 1.0  # all open: the static work plus the predictor


def test_convert_gates_refuses_bad_options(tiny_ckpt, data, tmp_path) -> None:
    base = ["convert", tiny_ckpt, "-o", tmp_path / "x.ckpt", "--method", "gates"]
    base += ["--train", data, "--dev", data]
    bad = invoke_cli(*base, "--predictor", "nope")
    assert bad.exit_code == 2 and "--predictor" in bad.stderr
    bad = invoke_cli(*base, "--target-modules", "1.5")
    assert bad.exit_code == 2 and "--target-modules" in bad.stderr
    bad = invoke_cli(*base, "--exits", "1")
    assert bad.exit_code == 2 and "--exits" in bad.stderr
    static = invoke_cli("profile", tiny_ckpt, "--data", data, "--policy", "gates", "--repeats", "1")
    assert static.exit_code == 2 and "gate predictor" in static.stderr
