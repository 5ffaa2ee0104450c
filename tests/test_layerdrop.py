"""Layer drop: convert --method layerdrop, the drop policy (kept layers, trace, FLOPs), profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import load_checkpoint
from dyncli.errors import UsageError
from dyncli.methods.drop import DropConfig
from dyncli.methods.drop.policy import DropLayers, kept_layers
from dyncli.methods.static import StaticPolicy
from tests.conftest import invoke_cli, tone_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layerdrop")
    manifest = tone_manifest(root)
    return manifest


def test_kept_layers_are_evenly_spaced_with_first_and_last() -> None:
    assert kept_layers(12, 12) == list(range(12))
    assert kept_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert kept_layers(12, 9)[0] == 0 and kept_layers(12, 9)[-1] == 11
    assert len(kept_layers(12, 9)) == 9
    assert kept_layers(12, 2) == [0, 11]
    assert kept_layers(12, 1) == [11]  # the layer whose output the head was trained on
    for n in range(1, 13):
        assert len(kept_layers(12, n)) == n


def test_drop_threshold_must_be_a_layer_count(tiny_ckpt) -> None:
    with pytest.raises(UsageError, match="layer count"):
        DropLayers(DropConfig(threshold=2.5))
    model = load_checkpoint(tiny_ckpt).model
    with pytest.raises(UsageError, match="the model has 3"):
        DropLayers(DropConfig(threshold=4)).check(model)


def test_dropped_layers_are_not_computed_and_cost_no_flops(tiny_ckpt) -> None:
    from dyncli.measure.flops import FlopTable
    from dyncli.measure.sweep import _encoder_flops

    model = load_checkpoint(tiny_ckpt).model
    ran: list[int] = []
    run_layer = model.run_layer

    def spy(index: int, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        ran.append(index)
        return run_layer(index, x, pad_mask)

    model.run_layer = spy  # type: ignore[method-assign]
    x = torch.randn(2, 9, model.head.in_features)
    lengths = torch.tensor([9, 6])
    out = DropLayers(DropConfig(threshold=2)).encode(model, x, lengths)
    assert ran == [0, 2]  # layer 1 (0-based) dropped
    assert [step[:2] for step in out.trace] == [("layer", 0), ("layer", 2), ("head", 3)]
    assert out.frame_layers.tolist() == [[2] * 9, [2] * 6 + [0] * 3]
    ran.clear()
    full = StaticPolicy().encode(model, x, lengths)
    table = FlopTable(model)
    dropped, static = _encoder_flops(table, out.trace), _encoder_flops(table, full.trace)
    assert dropped < static
    assert static - dropped == table.layer(1, 9) + table.layer(1, 6)


def test_convert_layerdrop_then_profile_and_evaluate_with_drop(tiny_ckpt, data, tmp_path) -> None:
    out = tmp_path / "ld.ckpt"
    result = invoke_cli(
        "convert", tiny_ckpt, "-o", out, "--method", "layerdrop", "--drop-rate", "0.3",
        "--train", data, "--dev", data, "--max-steps", "2", "--epochs", "1", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.method is not None
    assert ckpt.method["name"] == "layerdrop" and ckpt.method["drop_rate"] == 0.3
    assert ckpt.method["default_policy"] == "drop" and ckpt.model.exits == []
    report = tmp_path / "p.json"
    result = invoke_cli(
        "profile", out, "--data", data, "--thresholds", "1,2,3", "--repeats", "1",
        "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["threshold"] for r in rows] == [1, 2, 3]
    assert [r["policy"] for r in rows] == ["drop"] * 3
    assert rows[0]["flops_ratio"] < rows[1]["flops_ratio"] < rows[2]["flops_ratio"]
    result = invoke_cli("evaluate", out, "--data", data, "--policy", "drop", "--threshold", "2")
    assert result.exit_code == 0, result.output
    bad = invoke_cli("profile", out, "--data", data, "--thresholds", "4", "--repeats", "1")
    assert bad.exit_code == 2 and "the model has 3" in bad.stderr


def test_layerdrop_refuses_skip_aware_options(tiny_ckpt, data, tmp_path) -> None:
    result = invoke_cli(
        "convert", tiny_ckpt, "-o", tmp_path / "x.ckpt", "--method", "layerdrop",
        "--exits", "1", "--skip-layer", "1", "--train", data, "--dev", data,
    )  # fmt: skip
    assert result.exit_code == 2 and "--skip-layer" in result.stderr
