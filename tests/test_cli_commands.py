"""Every command end to end on tiny data, and every bad-input path of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import invoke_cli, write_wav

runner = CliRunner()


def invoke(*args: object):
    return invoke_cli(*args)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import json as _json

    from tests.conftest import WORDS

    root = tmp_path_factory.mktemp("train")
    rows = []
    for i in range(4):
        write_wav(root / f"u{i}.wav", seconds=0.5 + 0.1 * i, freq=300 + 80 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(WORDS[: 1 + i % 3])})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(_json.dumps(r) for r in rows))
    out = root / "model.ckpt"
    result = invoke(
        "train",
        "--train",
        manifest,
        "--dev",
        manifest,
        "-o",
        out,
        "--preset",
        "tiny",
        "--epochs",
        "2",
        "--max-steps",
        "2",
        "--tokenizer",
        "char",
        "--threads",
        "1",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.output
    return {"ckpt": out, "manifest": manifest, "root": root}


def test_train_writes_checkpoint_with_provenance(trained) -> None:
    from dyncli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained["ckpt"])
    assert ckpt.provenance["train_utterances"] == 4
    assert len(ckpt.provenance["train_fingerprint"]) == 64
    assert "dev_wer" in ckpt.metrics
    assert ckpt.tokenizer.kind == "char"


def test_evaluate_table_and_json(trained, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = invoke(
        "evaluate",
        trained["ckpt"],
        "--data",
        trained["manifest"],
        "--repeats",
        "1",
        "--json",
        report,
    )
    assert result.exit_code == 0, result.output
    assert "WER" in result.output and "RTF" in result.output and "thread" in result.output
    data = json.loads(report.read_text())
    assert data["schema_version"] == 1
    assert data["data"]["utterances"] == 4
    assert 0.0 <= data["result"]["wer"]
    assert data["result"]["rtf_min"] <= data["result"]["rtf"] <= data["result"]["rtf_max"]
    assert data["environment"]["threads"] == 1
    assert set(data["model"]) >= {"path", "sha256", "backbone", "layers", "method"}


def test_transcribe_and_inspect(trained) -> None:
    wav = trained["root"] / "u0.wav"
    result = invoke("transcribe", trained["ckpt"], wav, wav)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{wav}\t")
    result = invoke("inspect", trained["ckpt"])
    assert result.exit_code == 0, result.output
    for word in ("conformer", "layers", "char", "8000 Hz", "static"):
        assert word in result.output
    result = invoke("inspect", trained["ckpt"], "--json", "-")
    assert json.loads(result.stdout)["layers"] == 3


def test_failed_run_keeps_earlier_checkpoint(trained, tmp_path: Path) -> None:
    out = tmp_path / "keep.ckpt"
    out.write_bytes(trained["ckpt"].read_bytes())
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "missing.wav", "text": "one"}\n')
    result = invoke(
        "train", "--train", bad, "--dev", trained["manifest"], "-o", out, "--preset", "tiny"
    )
    assert result.exit_code == 2
    assert out.read_bytes() == before


def test_skip_bad_reports_count(trained, tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    good = json.loads(trained["manifest"].read_text().splitlines()[0])
    good["audio_filepath"] = str(trained["root"] / good["audio_filepath"])
    m.write_text(json.dumps(good) + "\n" + '{"audio_filepath": "missing.wav", "text": "one"}\n')
    result = invoke("evaluate", trained["ckpt"], "--data", m, "--repeats", "1")
    assert result.exit_code == 2
    assert "m.jsonl:2" in one_error_line(result)
    result = invoke("evaluate", trained["ckpt"], "--data", m, "--repeats", "1", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad entries" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["inspect", "{missing}"], "checkpoint not found"),
        (["inspect", "{junk}"], "not a readable checkpoint"),
        (["evaluate", "{ckpt}", "--data", "{missing}"], "manifest not found"),
        (["evaluate", "{junk}", "--data", "{manifest}"], "not a readable checkpoint"),
        (["evaluate", "{ckpt}", "--data", "{manifest}", "--device", "cuda:7"], None),
        (["transcribe", "{ckpt}", "{missing}"], "audio file not found"),
        (["transcribe", "{ckpt}", "{junk}"], "unreadable audio"),
        (
            [
                "train",
                "--train",
                "{manifest}",
                "--dev",
                "{manifest}",
                "-o",
                "{out}",
                "--preset",
                "huge",
            ],
            "unknown preset",
        ),
        (
            [
                "train",
                "--train",
                "{manifest}",
                "--dev",
                "{manifest}",
                "-o",
                "{out}",
                "--speed",
                "1.2:0.8",
            ],
            "LOW must not exceed HIGH",
        ),
        (
            [
                "train",
                "--train",
                "{manifest}",
                "--dev",
                "{manifest}",
                "-o",
                "{out}",
                "--speed",
                "fast",
            ],
            "expects a range LOW:HIGH",
        ),
        (
            [
                "train",
                "--train",
                "{manifest}",
                "--dev",
                "{manifest}",
                "-o",
                "{out}",
                "--tokenizer",
                "bpe",
            ],
            "--tokenizer",
        ),
        (
            [
                "train",
                "--train",
                "{manifest}",
                "--dev",
                "{manifest}",
                "-o",
                "{out}",
                "--backbone",
                "lstm",
            ],
            "unknown backbone",
        ),
        (
            [
                "train",
                "--train",
                "{manifest}",
                "--dev",
                "{manifest}",
                "-o",
                "{out}",
                "--preset",
                "tiny",
                "--heads",
                "3",
            ],
            "divisible",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(trained, tmp_path: Path, args, expected) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio nor a checkpoint")
    subs = {
        "{missing}": str(tmp_path / "missing.jsonl"),
        "{junk}": str(junk),
        "{ckpt}": str(trained["ckpt"]),
        "{manifest}": str(trained["manifest"]),
        "{out}": str(tmp_path / "o.ckpt"),
    }
    result = invoke(*[subs.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    if expected:
        assert expected in line
    assert not (tmp_path / "o.ckpt").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--threads", "0"],
        ["evaluate", "--repeats", "0"],
        ["inspect"],
        ["train", "--epochs", "0"],
    ],
)
def test_option_validation_is_usage_error(args) -> None:
    assert invoke(*args).exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "{ckpt}", "--data", "{manifest}", "--json", "{dir}"],
        ["profile", "{ckpt}", "--data", "{manifest}", "--json", "{dir}"],
        ["inspect", "{ckpt}", "--json", "{dir}"],
        ["train", "--train", "{manifest}", "--dev", "{manifest}", "-o", "{dir}"],
        ["convert", "{ckpt}", "-o", "{dir}", "--train", "{manifest}", "--dev", "{manifest}"],
    ],
)
def test_output_path_that_is_a_directory_is_refused_up_front(trained, tmp_path, args) -> None:
    """Refused before any work starts (profile of a static checkpoint would fail later)."""
    fill = {"ckpt": trained["ckpt"], "manifest": trained["manifest"], "dir": tmp_path}
    result = invoke(*[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "is a directory" in line and str(tmp_path) in line


def test_output_path_parent_is_created_or_refused(trained, tmp_path) -> None:
    out = tmp_path / "new" / "deeper" / "r.json"
    result = invoke(
        "evaluate", trained["ckpt"], "--data", trained["manifest"], "--repeats", "1",
        "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["result"]["words"] > 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("inspect", trained["ckpt"], "--json", blocker / "r.json")
    assert result.exit_code == 2
    assert "--json" in one_error_line(result)


def test_nan_audio_is_refused_and_skip_bad_skips_it(trained, tmp_path) -> None:
    import numpy as np
    import soundfile as sf

    bad = tmp_path / "nan.wav"
    wave = np.zeros(4000, dtype=np.float32)
    wave[100] = np.nan
    sf.write(str(bad), wave, 8000, subtype="FLOAT")
    good = trained["root"] / "u0.wav"
    result = invoke("transcribe", trained["ckpt"], good, bad)
    assert result.exit_code == 2
    assert f"{bad}: audio holds NaN/inf samples" in one_error_line(result)
    result = invoke("transcribe", trained["ckpt"], good, bad, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(f"{good}\t") and str(bad) not in result.stdout
    assert f"skipped: {bad}: audio holds NaN/inf samples" in result.stderr
