"""dyncli profile: JSON schema, gate exit codes 0/1/2/3, threshold parsing and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyncli.cli.options import parse_thresholds
from dyncli.errors import UsageError
from tests.conftest import WORDS, invoke_cli, write_wav

runner = CliRunner()

ROW_KEYS = {
    "policy",
    "threshold",
    "wer",
    "cer",
    "rtf",
    "rtf_min",
    "rtf_max",
    "speedup",
    "flops_ratio",
    "gflops_per_audio_second",
    "avg_layers",
    "skipped_frame_fraction",
    "pareto",
    "dwer",
    "dwer_low",
    "dwer_high",
    "dwer_prob_improvement",
    "dwer_differing",
    "dwer_resolution",
    "wer_low",
    "wer_high",
    "rtf_low",
    "rtf_high",
    "speedup_low",
    "speedup_high",
    "cpu_speedup",
    "cpu_speedup_low",
    "cpu_speedup_high",
    "encoder_speedup",
    "timing_pairs",
    "timing_iqr_median",
    "timing_warning",
    "gate_dwer",
    "gate_dwer_low",
    "gate_dwer_high",
    "gate_speedup",
    "gate_speedup_low",
    "gate_speedup_high",
}


def invoke(*args: object):
    return invoke_cli(*args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict[str, Path]:
    import torch

    from dyncli.checkpoint import load_checkpoint, save_checkpoint
    from dyncli.training import ExitTraining, early_exit_method

    root = tmp_path_factory.mktemp("profile")
    rows = []
    for i in range(3):
        write_wav(root / f"u{i}.wav", seconds=0.6 + 0.2 * i, freq=300 + 90 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(WORDS[: 1 + i])})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt.model.attach_exits([1, 2])
    with torch.no_grad():
        ckpt.model.exit_heads["1"].bias[0] += 2.0  # blank-heavy, so thresholds differ
    ckpt.method = early_exit_method(ExitTraining(exits=[1, 2]), training="fine-tune")
    dyn = root / "dyn.ckpt"
    save_checkpoint(dyn, ckpt)
    return {"ckpt": dyn, "static": tiny_ckpt, "data": manifest, "root": root}


def _profile(setup, *extra: object):
    return invoke(
        "profile", setup["ckpt"], "--data", setup["data"], "--repeats", "1", "--threads", "1",
        *extra,
    )  # fmt: skip


def test_json_schema(setup, tmp_path) -> None:
    out = tmp_path / "report.json"
    result = _profile(setup, "--thresholds", "0.5,0.9", "--skip-layer", "1", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema_version"] == 2
    assert {"path", "sha256", "backbone", "layers", "method"} <= set(report["model"])
    assert report["model"]["layers"] == 3 and report["model"]["method"] == "early-exit"
    assert report["data"]["utterances"] == 3 and report["data"]["audio_seconds"] > 0
    assert {"torch", "threads", "cpu", "device"} <= set(report["environment"])
    assert report["environment"]["threads"] == 1
    assert ROW_KEYS <= set(report["static"])
    assert [r["threshold"] for r in report["rows"]] == [0.5, 0.9]
    for row in report["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["policy"] == "blank-skip"
        assert 0 <= row["wer"] and 0 <= row["skipped_frame_fraction"] <= 1
        assert 1 <= row["avg_layers"] <= 3
        assert row["rtf_min"] <= row["rtf"] <= row["rtf_max"]
        assert row["dwer"] == pytest.approx(row["wer"] - report["static"]["wer"])
        assert row["dwer_low"] <= row["dwer"] <= row["dwer_high"]
        assert row["wer_low"] <= row["wer"] <= row["wer_high"]
        assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]
        assert row["timing_pairs"] == 3  # 3 utterances x 1 round
        assert not any(k.startswith("_") for k in row)  # per-utterance lists stay private
    static = report["static"]
    assert (static["dwer"], static["dwer_low"], static["dwer_high"]) == (0.0, 0.0, 0.0)
    assert static["flops_ratio"] == 1.0 and static["avg_layers"] == 3.0
    assert static["skipped_frame_fraction"] == 0.0
    # a lower threshold skips at least as many frames and executes at most as many FLOPs
    low, high = report["rows"]
    assert low["skipped_frame_fraction"] >= high["skipped_frame_fraction"]
    assert low["flops_ratio"] <= high["flops_ratio"] + 1e-12
    assert {"verdict", "passed", "operating_point", "violations", "inconclusive"} <= set(
        report["gate"]
    )
    assert report["gate"]["passed"] is True and report["gate"]["verdict"] == "PASS"
    timing = report["timing"]
    assert (timing["rounds"], timing["pairs"], timing["requested"]) == (1, 3, 1)
    assert timing["stopped"].startswith("--repeats 1")
    assert report["timing"]["sync"].startswith("none needed")  # CPU: says how it was timed
    assert "dyncli profile" in result.output  # the rich table was printed too


def test_json_to_stdout_is_pure_json(setup) -> None:
    result = _profile(setup, "--thresholds", "0.9", "--policy", "early-exit-entropy", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"][0]["policy"] == "early-exit-entropy"


def test_gate_passes_exit_0(setup) -> None:
    result = _profile(setup, "--thresholds", "0.9", "--max-wer", "1.0", "--min-speedup", "0")
    assert result.exit_code == 0, result.output
    assert "gate PASS" in result.output


def test_gate_fails_exit_1_one_line_per_bar(setup, tmp_path) -> None:
    out = tmp_path / "r.json"
    result = _profile(
        setup, "--thresholds", "0.9", "--max-rtf", "0", "--min-speedup", "1000", "--json", out
    )
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("gate failed: ") for ln in lines)
    assert "--max-rtf" in lines[0] and "--min-speedup" in lines[1]
    report = json.loads(out.read_text())  # the report is written even when the gate fails
    assert report["gate"]["passed"] is False and len(report["gate"]["violations"]) == 2


def test_gate_at_an_unrounded_threshold(setup, tmp_path) -> None:
    """--at is rounded once, as the sweep rounds it (this ended in StopIteration before)."""
    out = tmp_path / "r.json"
    result = _profile(setup, "--thresholds", "0.9", "--at", "0.12345678", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["gate"]["operating_point"]["threshold"] == 0.123457
    assert [r["threshold"] for r in report["rows"]] == [0.123457, 0.9]


def test_judge_refuses_an_at_outside_the_sweep() -> None:
    from dyncli.measure.gate import ReleaseBars, judge

    with pytest.raises(UsageError, match="not among the swept thresholds"):
        judge([_row(0.5, 0.1, 0.01, 1.0)], ReleaseBars(at=0.7))


def test_gate_at_picks_that_row(setup, tmp_path) -> None:
    out = tmp_path / "r.json"
    result = _profile(setup, "--thresholds", "0.5,0.9", "--at", "0.7", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["gate"]["operating_point"]["threshold"] == 0.7
    assert [r["threshold"] for r in report["rows"]] == [0.5, 0.7, 0.9]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--thresholds", "0.5,1.5"), "out of range"),
        (("--thresholds", "0:0.9:3"), "out of range"),
        (("--policy", "early-exit-entropy", "--thresholds", "-0.1"), "out of range"),
        (("--policy", "layer-magic"), "unknown skip policy 'layer-magic'"),
        (("--thresholds", "a,b"), "--thresholds expects a list"),
        (("--thresholds", "0.5:0.9"), "LOW:HIGH:COUNT"),
        (("--skip-layer", "3"), "blank-skip layer 3 has no CTC head"),
        (("--max-wer", "-1"), "--max-wer"),
        (("--policy", "early-exit-entropy", "--skip-layer", "1"), "--skip-layer does not apply"),
    ],
)
def test_usage_errors_exit_2(setup, args, expected) -> None:
    result = _profile(setup, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_static_checkpoint_and_missing_data_exit_2(setup, tmp_path) -> None:
    result = invoke("profile", setup["static"], "--data", setup["data"])
    assert result.exit_code == 2 and "static checkpoint" in result.stderr
    result = invoke("profile", setup["ckpt"], "--data", tmp_path / "none.jsonl")
    assert result.exit_code == 2 and "error:" in result.stderr


def test_parse_thresholds() -> None:
    assert parse_thresholds("0.5,0.7") == [0.5, 0.7]
    assert parse_thresholds("0.5:0.9:5") == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_thresholds(None) is None
    with pytest.raises(UsageError):
        parse_thresholds("0.5:0.9:0")


def test_profile_uses_stored_operating_point(setup, tmp_path) -> None:
    from dyncli.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(setup["ckpt"])
    assert ckpt.method is not None
    ckpt.method["operating_point"] = {
        "policy": "early-exit-posterior",
        "threshold": 0.42,
    }
    path = tmp_path / "op.ckpt"
    save_checkpoint(path, ckpt)
    out = tmp_path / "r.json"
    result = invoke("profile", path, "--data", setup["data"], "--repeats", "1", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["policy"]["name"] == "early-exit-posterior"
    stored = [r for r in report["rows"] if r["stored_operating_point"]]
    assert [r["threshold"] for r in stored] == [0.42]
    # transcribe uses the stored point too, and --full-depth equals the static model
    wav = setup["root"] / "u0.wav"
    dyn = invoke("transcribe", path, wav)
    full = invoke("transcribe", path, wav, "--full-depth")
    assert dyn.exit_code == 0 and full.exit_code == 0


def _row(
    th: float,
    wer: float,
    rtf: float,
    speedup: float,
    *,
    static_wer: float = 0.10,
    wer_width: float = 0.0,
    speed_width: float = 0.0,
) -> dict:
    """A row as the gate sees it, with doctored intervals around its figures."""
    dwer = wer - static_wer
    return {
        "policy": "blank-skip",
        "threshold": th,
        "wer": wer,
        "wer_low": wer - wer_width,
        "wer_high": wer + wer_width,
        "words": 500,
        "rtf": rtf,
        "rtf_low": rtf,
        "rtf_high": rtf,
        "speedup": speedup,
        "gate_dwer": dwer,
        "gate_dwer_low": dwer - wer_width,
        "gate_dwer_high": dwer + wer_width,
        "gate_speedup": speedup,
        "gate_speedup_low": speedup * (1 - speed_width),
        "gate_speedup_high": speedup * (1 + speed_width),
        "timing_pairs": 400,
    }


def test_pareto_flags() -> None:
    from dyncli.measure.report import pareto_flags

    rows = [
        {"wer": 0.10, "rtf": 0.010},  # static: most accurate
        {"wer": 0.10, "rtf": 0.008},  # as accurate, faster: dominates static
        {"wer": 0.12, "rtf": 0.006},  # faster, worse: on the front
        {"wer": 0.13, "rtf": 0.007},  # dominated by the previous
    ]
    assert pareto_flags(rows) == [False, True, True, False]


def test_judge_picks_fastest_passing_row_and_bars_are_one_sided() -> None:
    from dyncli.measure.gate import ReleaseBars, judge

    rows = [
        _row(0.5, 0.125, 0.006, 1.6),
        _row(0.9, 0.105, 0.007, 1.4),
        _row(0.99, 0.09, 0.009, 1.1),
    ]
    verdict = judge(rows, ReleaseBars(max_wer_increase=0.01))
    assert verdict["passed"] and verdict["operating_point"]["threshold"] == 0.9
    # an improvement (lower WER than static) never violates --max-wer-increase
    verdict = judge(rows, ReleaseBars(max_wer_increase=0.0, at=0.99))
    assert verdict["passed"] and verdict["violations"] == []
    # nothing passes: the closest miss is reported with one line per violated bar
    verdict = judge(rows, ReleaseBars(max_wer=0.05, min_speedup=2.0))
    assert not verdict["passed"] and verdict["verdict"] == "FAIL"
    assert len(verdict["violations"]) == 2
    assert any("--max-wer" in v for v in verdict["violations"])
    assert any("--min-speedup" in v for v in verdict["violations"])


@pytest.mark.parametrize(("min_speedup", "status"), [("0", 0), ("1000", 1)])
def test_release_gate_example_script(setup, tmp_path, min_speedup, status) -> None:
    """examples/ci/release_gate.sh relies only on the exit code and the JSON contract."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "ci" / "release_gate.sh"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "REPORT": str(tmp_path / "report.json"),
        "MIN_SPEEDUP": min_speedup,
        "MAX_WER_INCREASE": "1.0",
        "EXTRA_ARGS": "--repeats 2 --thresholds 0.9 --skip-layer 1",
    }
    done = subprocess.run(
        ["bash", str(script), str(setup["ckpt"]), str(setup["data"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == status, done.stderr
    verdict = "PASS" if status == 0 else "FAIL"
    assert f"release gate {verdict}" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gate"]["verdict"] == verdict


def test_batched_profile_and_flop_accounting(setup, tmp_path) -> None:
    """--batch-size times padded batches; at batch size 1 the padded count is the
    per-utterance count of the shared sweep, and padding only ever adds work."""
    import torch

    from dyncli.checkpoint import load_checkpoint
    from dyncli.data.dataset import load_utterances
    from dyncli.data.manifest import read_manifest
    from dyncli.dynamic import build_policy
    from dyncli.measure.flops import FlopTable
    from dyncli.measure.sweep import accuracy_sweep, batched_flops, make_batches
    from dyncli.methods.static import StaticPolicy

    out = tmp_path / "b.json"
    result = _profile(
        setup, "--thresholds", "0.5", "--skip-layer", "1", "--batch-size", "2", "--json", out
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["timing"]["batch_size"] == 2 and "padded" in report["timing"]["flops_basis"]

    ckpt = load_checkpoint(setup["ckpt"])
    model = ckpt.model
    utts, _ = load_utterances(read_manifest(setup["data"]), model.sample_rate, False)
    waves = [u.wave for u in utts]
    static, (row,) = accuracy_sweep(model, ckpt.tokenizer, waves, "blank-skip", [0.5], {"layer": 1})
    table = FlopTable(model)
    cpu = torch.device("cpu")
    skip = build_policy("blank-skip", 0.5, layer=1)
    one = make_batches(waves, 1, cpu)
    assert batched_flops(model, table, one, StaticPolicy())[0] == static.flops
    assert batched_flops(model, table, one, skip)[0] == row.flops
    three = make_batches(waves, 3, cpu)
    assert batched_flops(model, table, three, StaticPolicy())[0] > static.flops


def test_several_policies_in_one_table(setup, tmp_path) -> None:
    """One static row, then every requested policy's rows by executed FLOPs, timed together."""
    out = tmp_path / "multi.json"
    result = _profile(setup, "--policy", "blank-skip,early-exit-entropy,drop", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["static"]["policy"] == "static"
    policies = {r["policy"] for r in report["rows"]}
    assert policies == {"blank-skip", "early-exit-entropy", "drop"}
    assert [r["threshold"] for r in report["rows"] if r["policy"] == "drop"] == [2, 3]
    flops = [r["flops_ratio"] for r in report["rows"]]
    assert flops == sorted(flops)
    assert report["policy"]["name"] == "blank-skip,early-exit-entropy,drop"
    assert set(report["policy"]["thresholds"]) == policies
    assert all("speedup" in r and "pareto" in r for r in report["rows"])
    table = _profile(setup, "--policy", "all")
    assert table.exit_code == 0, table.output
    for name in ("blank-skip", "early-exit-entropy", "early-exit-posterior", "drop"):
        assert name in table.output
    assert "gates" not in table.output.split("policy")[-1].split("data:")[0]  # no predictor
    refused = _profile(setup, "--policy", "blank-skip,drop", "--thresholds", "0.5")
    assert refused.exit_code == 2 and "--thresholds applies to one --policy" in refused.stderr
    unknown = _profile(setup, "--policy", "blank-skip,nope")
    assert unknown.exit_code == 2 and "unknown skip policy 'nope'" in unknown.stderr


def test_plot_is_written_and_opens(setup, tmp_path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib import image

    png = tmp_path / "front.png"
    result = _profile(setup, "--policy", "blank-skip,early-exit-entropy", "--plot", png)
    assert result.exit_code == 0, result.output
    pixels = image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 0  # something was drawn
    assert matplotlib.get_backend().lower() == "agg"


def test_plot_without_matplotlib_is_a_one_line_hint(setup, tmp_path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = _profile(setup, "--plot", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "pip install 'dyncli[plot]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_other_models_join_the_same_timed_rounds(setup, tmp_path) -> None:
    """--models: another checkpoint's full depth (and the policies it can run) timed against
    the same static row; ratios are against that row."""
    out = tmp_path / "models.json"
    other = tmp_path / "dyn2.ckpt"  # a copy: CHECKPOINT itself in --models is refused
    shutil.copy(setup["ckpt"], other)
    result = _profile(
        setup, "--policy", "blank-skip", "--models", f"{setup['static']},{other}",
        "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    static = report["static"]
    assert static["model"] == "dyn.ckpt"
    by_model: dict[str, list[dict]] = {}
    for row in report["rows"]:
        by_model.setdefault(row["model"], []).append(row)
    assert set(by_model) == {"dyn.ckpt", "tiny.ckpt", "dyn2.ckpt"}
    tiny = by_model["tiny.ckpt"]  # static: its full depth only (no exits for blank-skip)
    assert [(r["policy"], r["threshold"]) for r in tiny] == [("static", None)]
    # The same weights as the main model without exits: the same WER, the same FLOPs bar the
    # exit heads blank-skip never runs at full depth.
    assert tiny[0]["wer"] == static["wer"]
    assert tiny[0]["flops_ratio"] == pytest.approx(1.0)
    assert "speedup" in tiny[0] and tiny[0]["speedup"] > 0
    again = by_model["dyn2.ckpt"]
    assert sum(1 for r in again if r["policy"] == "static") == 1  # its full depth, once
    table = _profile(setup, "--policy", "blank-skip", "--models", setup["static"])
    assert table.exit_code == 0 and "tiny.ckpt" in table.output


def test_every_row_key_is_documented_in_the_readme() -> None:
    """The typed Row is the schema: each of its fields is a JSON key the README lists."""
    from dyncli.measure.report import ROW_KEYS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("| `static`, `rows[]` |"))
    listed = set(__import__("re").findall(r"`([a-z_]+)`", line))
    assert set(ROW_KEYS) <= listed, set(ROW_KEYS) - listed
