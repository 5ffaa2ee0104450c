"""dyncli prune: iterative layer pruning to a static checkpoint every command accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import load_checkpoint
from dyncli.recipes.prune import without_layer
from tests.conftest import invoke_cli, tone_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prune")
    manifest = tone_manifest(root)
    return manifest


def test_removing_a_layer_equals_bypassing_it(tiny_ckpt) -> None:
    ckpt = load_checkpoint(tiny_ckpt)
    model = ckpt.model
    smaller = without_layer(model, 1, ckpt.backbone, ckpt.config).eval()
    assert smaller.num_layers == model.num_layers - 1
    x = torch.randn(1, 12, model.head.in_features)
    with torch.inference_mode():
        ref = x
        for i in (0, 2):
            ref = model.run_layer(i, ref, None)
        got = x
        for i in range(smaller.num_layers):
            got = smaller.run_layer(i, got, None)
    torch.testing.assert_close(got, ref)


def test_prune_keeps_n_layers_and_the_result_loads_everywhere(tiny_ckpt, data, tmp_path) -> None:
    out = tmp_path / "pruned.ckpt"
    result = invoke_cli(
        "prune", tiny_ckpt, "-o", out, "--keep", "1", "--train", data, "--dev", data,
        "--max-steps", "1", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "kept layers" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.model.num_layers == 1 and ckpt.config.num_layers == 1
    assert ckpt.method is None  # a static checkpoint
    assert len(ckpt.provenance["kept_layers"]) == 1 and len(ckpt.provenance["prune_rounds"]) == 2
    assert not (tmp_path / "pruned.ckpt.run").exists()
    shown = invoke_cli("inspect", out)
    assert shown.exit_code == 0 and "pruned" in shown.output
    evaluated = invoke_cli("evaluate", out, "--data", data, "--repeats", "1")
    assert evaluated.exit_code == 0, evaluated.output
    converted = invoke_cli(
        "convert", out, "-o", tmp_path / "g.ckpt", "--method", "gates", "--train", data,
        "--dev", data, "--max-steps", "1", "--epochs", "1", "--threads", "1",
    )  # fmt: skip
    assert converted.exit_code == 0, converted.output


def test_prune_refuses_bad_keep(tiny_ckpt, data, tmp_path) -> None:
    bad = invoke_cli(
        "prune", tiny_ckpt, "-o", tmp_path / "x.ckpt", "--keep", "3", "--train", data,
        "--dev", data,
    )  # fmt: skip
    assert bad.exit_code == 2 and "--keep must lie in 1..2" in bad.stderr
