"""The bundled demo model and evaluation set: present, small, attributed, and working."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dyncli import assets
from dyncli.cli.app import build_app
from dyncli.data.manifest import read_manifest

MB = 1024 * 1024


def test_assets_within_budget_and_attributed() -> None:
    total = sum(p.stat().st_size for p in assets.ASSETS.rglob("*") if p.is_file())
    assert total <= 25 * MB
    readme = (assets.EVAL_MANIFEST.parent / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "Free Spoken Digit Dataset" in readme


def test_eval_set_is_one_unseen_speaker() -> None:
    from dyncli.checkpoint import load_checkpoint

    manifest = read_manifest(assets.EVAL_MANIFEST)
    assert 100 <= len(manifest.items) <= 150
    rows = [json.loads(line) for line in assets.EVAL_MANIFEST.read_text().splitlines() if line]
    speakers = {r["speaker"] for r in rows}
    assert len(speakers) == 1
    ckpt = load_checkpoint(assets.DEMO_STATIC)
    assert ckpt.model.num_layers >= 10
    # Provenance names the manifests it was trained and tuned on; the speaker is in neither.
    train_manifest = ckpt.provenance["train_manifest"]
    dev_manifest = ckpt.provenance["dev_manifest"]
    assert "test" not in train_manifest and "test" not in dev_manifest


def test_default_evaluate_runs_on_bundled_assets(tmp_path) -> None:
    report = tmp_path / "r.json"
    result = CliRunner().invoke(
        build_app(), ["evaluate", "--repeats", "1", "--device", "cpu", "--json", report]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["data"]["utterances"] == len(read_manifest(assets.EVAL_MANIFEST).items)
    assert data["result"]["wer"] <= 0.25  # the bundled model's accuracy bar on an unseen speaker


def test_bundled_dynamic_model_skips_on_the_bundled_set(tmp_path) -> None:
    """`dyncli profile` with no arguments uses the bundled dynamic model and evaluation set;
    at its stored operating point it exits early on many frames and keeps the accuracy bar."""
    from dyncli.checkpoint import load_checkpoint

    assert assets.DEMO_DYNAMIC.is_file()
    ckpt = load_checkpoint(assets.DEMO_DYNAMIC)
    assert ckpt.method is not None and ckpt.model.exits
    point = ckpt.method["operating_point"]
    assert point["policy"].startswith("early-exit") and ckpt.method["freeze_backbone"]
    assert point["dev_dwer_high"] <= point["wer_budget"]  # chosen with a margin, on dev
    assert point["stress_dwer_high"] <= point["wer_budget"]  # and on the stress copy of dev
    report = tmp_path / "r.json"
    result = CliRunner().invoke(
        build_app(),
        [
            "profile",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--thresholds",
            str(point["threshold"]),
            "--json",
            report,
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["model"]["path"] == str(assets.DEMO_DYNAMIC)
    (row,) = data["rows"]
    assert row["stored_operating_point"]
    assert row["wer"] <= 0.25 and data["static"]["wer"] <= 0.25
    assert row["skipped_frame_fraction"] > 0.3  # the operating point really skips
    assert row["flops_ratio"] < 0.8
