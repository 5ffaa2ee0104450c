"""convert / train --exits: heads attached, trained, recorded; frozen backbone stays frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dyncli.data.dataset import pad_waves
from dyncli.recipes.common import ctc_objectives
from dyncli.training import ExitTraining
from dyncli.training.module import TrainingModule
from dyncli.training.objectives import Batch, FullDepth, SkipAware, StudentPath
from tests.conftest import invoke_cli, tone_manifest

runner = CliRunner()


def invoke(*args: object):
    return invoke_cli(*args)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("convert")
    manifest = tone_manifest(root)
    return manifest


def _convert(tiny_ckpt: Path, data: Path, out: Path, *extra: object):
    return invoke(
        "convert", tiny_ckpt, "-o", out, "--exits", "1,2", "--train", data, "--dev", data,
        "--max-steps", "2", "--epochs", "1", "--threads", "1", "--device", "cpu", *extra,
    )  # fmt: skip


def test_convert_records_method_and_trains_separate_heads(tiny_ckpt, data, tmp_path) -> None:
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "dyn.ckpt"
    result = _convert(tiny_ckpt, data, out)
    assert result.exit_code == 0, result.output
    assert "exit 1" in result.output and "exit 2" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.model.exits == [1, 2]
    assert ckpt.method is not None
    assert ckpt.method["name"] == "early-exit"
    assert ckpt.method["exits"] == [1, 2]
    assert ckpt.method["training"] == "fine-tune"
    assert ckpt.method["freeze_backbone"] is False
    assert set(ckpt.metrics["dev_exit_wer"]) == {"1", "2"}
    heads = ckpt.model.exit_heads
    assert not torch.equal(heads["1"].weight, heads["2"].weight)  # trained apart, not shared
    static = load_checkpoint(tiny_ckpt)
    moved = [
        k
        for k, v in static.model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, ckpt.model.state_dict()[k])
    ]
    assert moved, "fine-tuning should update the backbone"


def test_freeze_backbone_keeps_backbone_and_outputs(tiny_ckpt, data, tmp_path) -> None:
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "frozen.ckpt"
    result = _convert(tiny_ckpt, data, out, "--freeze-backbone", "--lr", "0.01")
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    static = load_checkpoint(tiny_ckpt)
    state = ckpt.model.state_dict()
    for key, value in static.model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm statistics included
    fresh = load_checkpoint(tiny_ckpt).model
    fresh.attach_exits([1, 2])
    assert not torch.equal(fresh.exit_heads["1"].weight, ckpt.model.exit_heads["1"].weight)
    assert ckpt.method is not None and ckpt.method["freeze_backbone"] is True


def test_train_from_scratch_with_exits(data, tmp_path) -> None:
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "scratch.ckpt"
    result = invoke(
        "train", "--train", data, "--dev", data, "-o", out, "--preset", "tiny",
        "--exits", "2", "--max-steps", "2", "--epochs", "1", "--tokenizer", "char",
        "--threads", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.model.exits == [2]
    assert ckpt.method is not None and ckpt.method["training"] == "from-scratch"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--exits", "3"), "must lie in 1..2"),
        (("--exits", "0"), "must lie in 1..2"),
        (("--exits", "1,1"), "lists a layer twice"),
        (("--exits", "a,b"), "comma-separated layer numbers"),
        (("--method", "pruning", "--exits", "1"), "unknown --method 'pruning'"),
        (("--exits", "1", "--wer-budget", "0.01", "--policy", "nope"), "unknown skip policy"),
    ],
)
def test_convert_bad_options_exit_2(tiny_ckpt, data, tmp_path, args, expected) -> None:
    result = invoke(
        "convert", tiny_ckpt, "-o", tmp_path / "x.ckpt", "--train", data, "--dev", data,
        "--max-steps", "1", *args,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert not (tmp_path / "x.ckpt").exists()


def test_convert_keeps_the_input(tiny_ckpt, data) -> None:
    before = tiny_ckpt.read_bytes()
    result = _convert(tiny_ckpt, data, tiny_ckpt)
    assert result.exit_code == 2 and "is the input CHECKPOINT" in result.stderr
    assert tiny_ckpt.read_bytes() == before


def test_convert_refuses_a_dynamic_input(tiny_ckpt, data, tmp_path) -> None:
    out = tmp_path / "dyn.ckpt"
    assert _convert(tiny_ckpt, data, out).exit_code == 0
    again = _convert(out, data, tmp_path / "again.ckpt")
    assert again.exit_code == 2
    assert "already a dynamic checkpoint" in again.stderr


def _loss(
    model: torch.nn.Module,
    waves: list[torch.Tensor],
    targets: list[list[int]],
    exits: ExitTraining,
    path: StudentPath | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module = TrainingModule(model, ctc_objectives(exits), path=path or FullDepth())  # type: ignore[arg-type]
    module.train(False)  # no dropout: deterministic
    wave, lens = pad_waves(waves)
    return module(Batch(ids=list(range(len(waves))), wave=wave, lengths=lens, targets=targets))


def test_exit_losses_use_true_lengths(tiny_ckpt) -> None:
    """Batch loss (final + exits) equals the mean of single-utterance losses: padding unused."""
    from dyncli.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_ckpt).model
    model.attach_exits([1, 2])
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=gen) * 0.1 for n in (4000, 7200)]
    targets = [[3, 4], [5]]
    exits = ExitTraining(exits=[1, 2], exit_weight=0.5)
    batch, terms = _loss(model, waves, targets, exits)
    assert set(terms) == {"ctc", "exit_ctc"}
    singles = [_loss(model, [w], [t], exits)[0] for w, t in zip(waves, targets, strict=True)]
    torch.testing.assert_close(batch, sum(singles) / 2, rtol=1e-4, atol=1e-4)


def test_skip_aware_loss_equals_plain_loss_when_nothing_is_skipped(tiny_ckpt) -> None:
    """With every frame kept, blank-skip in the loop (the policy's own prefix and suffix,
    gather/scatter included) gives the full-depth loss, and is differentiable."""
    from dyncli.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_ckpt).model
    model.attach_exits([1])
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=gen) * 0.1 for n in (4000, 7200)]
    targets = [[3, 4], [5]]
    plain, plain_terms = _loss(model, waves, targets, ExitTraining(exits=[1]))
    always = SkipAware(1, (1.0, 1.0), neighbours=0, prob=1.0, generator=torch.Generator())
    skip, terms = _loss(model, waves, targets, ExitTraining(exits=[1]), path=always)
    torch.testing.assert_close(skip, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(terms["exit_ctc"], plain_terms["exit_ctc"])
    skip.backward()  # differentiable through gather and scatter
    assert model.layers[2].ffn1.sequential[1].weight.grad is not None


def test_convert_skip_aware(tiny_ckpt, data, tmp_path) -> None:
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "skip.ckpt"
    result = _convert(tiny_ckpt, data, out, "--skip-layer", "1")
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.method is not None and ckpt.method["skip_aware_training"]["layer"] == 1
    bad = _convert(tiny_ckpt, data, tmp_path / "bad.ckpt", "--skip-layer", "2", "--exits", "1")
    assert bad.exit_code == 2 and "needs an exit" in bad.stderr


def test_wer_budget_stores_operating_point_used_by_profile(tiny_ckpt, data, tmp_path) -> None:
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "op.ckpt"
    result = _convert(tiny_ckpt, data, out, "--wer-budget", "1.0", "--skip-layer", "1")
    assert result.exit_code == 0, result.output
    assert "operating point (blank-skip, chosen on dev)" in result.output
    assert "dev sweep (blank-skip; full depth" in result.output
    assert "threshold 0.999:" in result.output  # the conservative thresholds are tried too
    ckpt = load_checkpoint(out)
    assert ckpt.method is not None
    point = ckpt.method["operating_point"]
    assert point["policy"] == "blank-skip" and point["layer"] == 1
    assert 0 < point["threshold"] <= 1 and point["flops_ratio"] > 0
    report = tmp_path / "r.json"
    prof = invoke("profile", out, "--data", data, "--repeats", "1", "--json", report)
    assert prof.exit_code == 0, prof.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["threshold"] for r in rows if r["stored_operating_point"]] == [point["threshold"]]


def test_inspect_shows_exits_and_method(tiny_ckpt, data, tmp_path) -> None:
    out = tmp_path / "dyn.ckpt"
    assert _convert(tiny_ckpt, data, out).exit_code == 0
    result = invoke("inspect", out, "--json", "-")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["exits"] == [1, 2] and info["ctc_heads"] == 3
    assert info["method"] == "early-exit" and info["operating_point"] is None
