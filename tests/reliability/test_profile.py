"""Issue 17, profile part: --models labels and duplicates, --plot formats, --thresholds
limits, --help markup, and the demo defaults (operating-point mark, data-derived sweep)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dyncli.cli.options import parse_thresholds
from dyncli.errors import UsageError
from tests.conftest import invoke_cli, tone_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict[str, Path]:
    """A tiny dynamic model (exits after layers 1 and 2), its static parent and 4 utterances."""
    import torch

    from dyncli.checkpoint import load_checkpoint, save_checkpoint
    from dyncli.training import ExitTraining, early_exit_method

    root = tmp_path_factory.mktemp("reliability_profile")
    manifest = tone_manifest(root)
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt.model.attach_exits([1, 2])
    with torch.no_grad():
        ckpt.model.exit_heads["1"].bias[0] += 2.0  # blank-heavy: exit 1 is more confident
    ckpt.method = early_exit_method(ExitTraining(exits=[1, 2]), training="fine-tune")
    dyn = root / "dyn.ckpt"
    save_checkpoint(dyn, ckpt)
    return {"ckpt": dyn, "static": tiny_ckpt, "data": manifest, "root": root}


def _profile(ckpt: object, data: object, *extra: object):
    return invoke_cli("profile", ckpt, "--data", data, "--repeats", "1", *extra)


def _one_error_line(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output


# Item 6: profile --models


def test_item6_same_file_names_get_unique_labels(setup, tmp_path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(setup["static"], tmp_path / folder / "model.ckpt")
    out = tmp_path / "r.json"
    models = f"{tmp_path / 'a' / 'model.ckpt'},{tmp_path / 'b' / 'model.ckpt'}"
    result = _profile(setup["ckpt"], setup["data"], "--policy", "blank-skip", "--thresholds",
                      "0.9", "--models", models, "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["static"]["model"] == "dyn.ckpt"
    labels = {r["model"] for r in report["rows"]}
    assert labels == {"dyn.ckpt", "a/model.ckpt", "b/model.ckpt"}


def test_item6_model_labels_are_shortest_unique_suffixes() -> None:
    from dyncli.measure.profile import model_labels

    assert model_labels(["/x/dyn.ckpt", "/x/a/m.ckpt", "/y/a/m.ckpt", "/y/b/m.ckpt"]) == [
        "dyn.ckpt",
        "x/a/m.ckpt",
        "y/a/m.ckpt",
        "b/m.ckpt",
    ]


def test_item6_duplicate_models_refused(setup) -> None:
    dyn = setup["ckpt"]
    twice = _profile(setup["static"], setup["data"], "--models", f"{dyn},{dyn}")
    _one_error_line(twice, "twice")
    # The main CHECKPOINT again, spelt differently: the same file.
    same = dyn.parent / ".." / dyn.parent.name / dyn.name
    main = _profile(dyn, setup["data"], "--models", f"{setup['static']},{same}")
    _one_error_line(main, "same file as CHECKPOINT")


def test_item6_static_checkpoint_with_models(setup, tmp_path) -> None:
    """A static CHECKPOINT with --models used to end in KeyError: 'gflops_per_audio_second'."""
    out = tmp_path / "r.json"
    result = _profile(setup["static"], setup["data"], "--models", setup["ckpt"], "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["static"]["model"] == "tiny.ckpt"
    assert report["static"]["flops_ratio"] == pytest.approx(1.0)
    dyn_rows = [r for r in report["rows"] if r["model"] == "dyn.ckpt"]
    assert dyn_rows and all("rtf" in r for r in dyn_rows)


# Item 8a: --plot writes the format its extension names


@pytest.mark.parametrize(("name", "magic"), [("p.pdf", b"%PDF"), ("p.svg", b"<svg")])
def test_item8a_plot_format_follows_extension(setup, tmp_path, name, magic) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / name
    result = _profile(setup["ckpt"], setup["data"], "--thresholds", "0.9", "--plot", path)
    assert result.exit_code == 0, result.output
    data = path.read_bytes()
    assert magic in data[:400] and not data.startswith(b"\x89PNG")


def test_item8a_plot_unsupported_extension_refused_before_work(
    setup, tmp_path, monkeypatch
) -> None:
    pytest.importorskip("matplotlib")
    import dyncli.measure.profile

    def no_work(**_: object) -> None:
        raise AssertionError("profiling started before --plot was checked")

    monkeypatch.setattr(dyncli.measure.profile, "profile", no_work)
    for name in ("p.txt", "p"):
        result = _profile(setup["ckpt"], setup["data"], "--plot", tmp_path / name)
        _one_error_line(result, "--plot")
        assert ".png" in result.stderr and not (tmp_path / name).exists()


# Item 16a: --thresholds limits


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5:0.9:1000000", "at most 1000"),
        (",".join(str(i / 5000) for i in range(1, 1200)), "at most 1000"),
        ("nan", "finite"),
        ("0.5,inf", "finite"),
        ("0.5:inf:3", "finite"),
        ("0.5,0.7,0.5", "twice"),
        ("0.5:0.5:3", "twice"),
        ("0.1,0.1000001", "twice"),  # the same after the 6-decimal rounding
        (",", "no thresholds"),
    ],
)
def test_item16a_bad_thresholds_refused(text, expected) -> None:
    with pytest.raises(UsageError, match=expected):
        parse_thresholds(text)


def test_item16a_good_thresholds_still_parse() -> None:
    assert parse_thresholds("0.5:0.9:5") == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert len(parse_thresholds("0:1:1000") or []) == 1000
    assert parse_thresholds(" 0.9, 0.5 ") == [0.9, 0.5]


@pytest.mark.parametrize(
    "args",
    [
        ("--thresholds", "0.5:0.9:1000000"),
        ("--policy", "drop", "--thresholds", "inf"),  # was an OverflowError traceback
        ("--policy", "drop", "--thresholds", "nan"),  # was a ValueError traceback
    ],
)
def test_item16a_cli_one_line(setup, args) -> None:
    _one_error_line(_profile(setup["ckpt"], setup["data"], *args), "--thresholds")


@pytest.mark.parametrize("flag", ["--max-wer", "--at"])
def test_item16a_non_finite_gate_values_refused(setup, flag) -> None:
    """--max-wer nan used to pass every row (no comparison with nan is true)."""
    result = _profile(setup["ckpt"], setup["data"], "--thresholds", "0.9", flag, "nan")
    _one_error_line(result, flag)


def test_item16a_drop_config_non_finite_is_a_usage_error() -> None:
    from dyncli.methods.drop import DropConfig

    for value in (float("nan"), float("inf")):
        with pytest.raises(UsageError, match="layer count"):
            DropConfig(threshold=value).validate()


# Item 20j: --help keeps [plot]


def test_item20j_help_shows_the_plot_extra() -> None:
    result = invoke_cli("profile", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pip install 'dyncli[plot]'" in result.output


# Item 21: demo defaults


def test_item21_no_gate_bars_marks_no_operating_point(setup) -> None:
    plain = _profile(setup["ckpt"], setup["data"], "--thresholds", "0.5,0.9")
    assert plain.exit_code == 0, plain.output
    rows = [ln for ln in plain.stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == 3  # static and two thresholds
    assert all(">" not in ln.split("│")[1] for ln in rows)
    assert "operating point" not in plain.stdout.split("no gate bars given")[1]
    gated = _profile(setup["ckpt"], setup["data"], "--thresholds", "0.5,0.9", "--max-wer", "1")
    assert gated.exit_code == 0, gated.output
    rows = [ln for ln in gated.stdout.splitlines() if ln.startswith("│")]
    assert sum(">" in ln.split("│")[1] for ln in rows) == 1


@pytest.mark.parametrize("policy", ["early-exit-entropy", "early-exit-posterior"])
def test_item21_early_exit_default_sweep_rows_all_differ(setup, tmp_path, policy) -> None:
    out = tmp_path / "r.json"
    result = _profile(setup["ckpt"], setup["data"], "--policy", policy, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert len(rows) >= 2
    depths = [r["avg_layers"] for r in rows]
    assert len(set(depths)) == len(depths), depths  # every row runs a different depth
    assert "quantiles" in report["policy"]["sweep"]


def test_item21_explicit_thresholds_unchanged(setup, tmp_path) -> None:
    out = tmp_path / "r.json"
    result = _profile(setup["ckpt"], setup["data"], "--policy", "early-exit-entropy",
                      "--thresholds", "0.3,0.1", "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["threshold"] for r in report["rows"]] == [0.1, 0.3]
    assert report["policy"]["sweep"] == "--thresholds"


def test_item21_data_sweep_crosses_one_breakpoint_per_row(setup) -> None:
    """Each derived threshold changes the exit of at least one utterance (label-free)."""
    from dyncli.checkpoint import load_checkpoint
    from dyncli.data.dataset import load_utterances
    from dyncli.data.manifest import read_manifest
    from dyncli.measure.sweep import accuracy_sweep
    from dyncli.methods.early_exit.policy import early_exit_thresholds_from_data

    ckpt = load_checkpoint(setup["ckpt"])
    utts, _ = load_utterances(read_manifest(setup["data"]), ckpt.model.sample_rate, False)
    waves = [u.wave for u in utts]
    values = early_exit_thresholds_from_data(ckpt.model, waves, "entropy")
    assert list(values) == sorted(set(values)) and len(values) >= 2
    _, rows = accuracy_sweep(
        ckpt.model, ckpt.tokenizer, waves, "early-exit-entropy", list(values), {}
    )
    layers = [r.frame_layers for r in rows]
    assert all(a > b for a, b in zip(layers, layers[1:], strict=False))
