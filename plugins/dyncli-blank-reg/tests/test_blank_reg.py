"""The blank-reg plugin end to end: installed, it adds ``convert --method blank-reg`` with its
own flag, its checkpoint records the method, and ``inspect`` and ``profile`` run it, all
without a line of it inside ``dyncli/``."""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

try:
    import dyncli_blank_reg
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dyncli_blank_reg

from dyncli.cli.app import build_app


def invoke(*args: object):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


@pytest.fixture(scope="module")
def static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dyncli.checkpoint import Checkpoint, save_checkpoint
    from dyncli.data.text import CharTokenizer
    from dyncli.models.config import CONFORMER_PRESETS
    from dyncli.models.conformer import build_conformer_ctc

    torch.manual_seed(0)
    tok = CharTokenizer.train(["one two three"])
    cfg = CONFORMER_PRESETS["tiny"]
    path = tmp_path_factory.mktemp("ckpt") / "static.ckpt"
    model = build_conformer_ctc(cfg, tok.vocab_size).eval()
    save_checkpoint(path, Checkpoint(model=model, tokenizer=tok, backbone="conformer", config=cfg))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    words = ["one", "two", "three"]
    rows = []
    for i in range(4):
        t = np.arange(int((0.5 + 0.1 * i) * 8000)) / 8000
        wave = (0.3 * np.sin(2 * math.pi * (300 + 80 * i) * t)).astype(np.float32)
        sf.write(str(root / f"u{i}.wav"), wave, 8000)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(words[: 1 + i % 3])})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return manifest


def convert(static: Path, data: Path, out: Path, *extra: object):
    return invoke(
        "convert", static, "-o", out, "--train", data, "--dev", data, "--max-steps", "2",
        "--epochs", "1", "--threads", "1", "--device", "cpu", *extra,
    )  # fmt: skip


def test_installed_as_an_entry_point() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group="dyncli")}
    assert "blank-reg" in names, "install it: pip install -e plugins/dyncli-blank-reg"
    from dyncli.registry.manager import methods

    assert methods("convert")["blank-reg"].train is not None
    assert "blank-reg" not in methods("distill")


def test_plugins_command_lists_the_method() -> None:
    result = invoke("plugins", "--json", "-")
    assert result.exit_code == 0, result.output
    methods = json.loads(result.stdout)["methods"]
    assert methods["blank-reg"]["command"] == "convert"
    assert methods["early-exit"]["command"] == "convert"
    assert methods["exit-kd"]["command"] == "distill"


def test_convert_help_lists_the_method_and_its_flag() -> None:
    result = invoke("convert", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "blank-reg" in text and "--blank-penalty" in text


def test_convert_inspect_profile(static: Path, data: Path, tmp_path: Path) -> None:
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "br.ckpt"
    result = convert(
        static, data, out, "--method", "blank-reg", "--exits", "1", "--blank-penalty", "2"
    )
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.method is not None
    assert ckpt.method["name"] == "blank-reg"
    assert ckpt.method["blank-reg"]["penalty"] == 2.0
    assert ckpt.model.exits == [1]
    assert "exit_blank_reg" in " ".join(ckpt.metrics) or ckpt.metrics  # trained and saved

    shown = invoke("inspect", out)
    assert shown.exit_code == 0, shown.output
    assert "blank-reg" in shown.output

    report = tmp_path / "p.json"
    profiled = invoke(
        "profile", out, "--data", data, "--policy", "blank-skip", "--thresholds", "0.5,0.9",
        "--threads", "1", "--device", "cpu", "--json", report, "--repeats", "1",
    )  # fmt: skip
    assert profiled.exit_code == 0, profiled.output
    rows = json.loads(report.read_text())["rows"]
    assert {r["policy"] for r in rows} >= {"blank-skip"}


def test_flag_refused_for_other_methods(static: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.ckpt"
    result = convert(static, data, out, "--exits", "1", "--blank-penalty", "2")
    assert result.exit_code == 2
    assert "--blank-penalty does not apply to --method early-exit" in result.output
    assert "only to --method blank-reg" in result.output
    assert not out.exists()


def test_bad_penalty_and_missing_exits_refused(static: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.ckpt"
    bad = convert(
        static, data, out, "--method", "blank-reg", "--exits", "1", "--blank-penalty", "-1"
    )
    assert bad.exit_code == 2 and "--blank-penalty" in bad.output
    none = convert(static, data, out, "--method", "blank-reg")
    assert none.exit_code == 2 and "give --exits" in none.output
    assert not out.exists()


def test_objective_penalizes_exits_only() -> None:
    from dyncli_blank_reg.training import BlankRegExitCTC

    from dyncli.training.objectives import Batch, Step, StudentPass

    torch.manual_seed(0)
    lp = torch.randn(2, 12, 5).log_softmax(-1)
    batch = Batch(ids=[0, 1], wave=torch.zeros(2, 1), lengths=torch.ones(2), targets=[[1, 2], [3]])
    student = StudentPass(exits={1: lp}, final=lp, lengths=torch.tensor([12, 10]))
    plain = BlankRegExitCTC(0.0)(Step(batch, student))["exit_blank_reg"]
    charged = BlankRegExitCTC(2.0)(Step(batch, student))["exit_blank_reg"]
    assert charged > plain
    assert BlankRegExitCTC(2.0)(Step(batch, StudentPass({}, lp, student.lengths))) == {}
    assert dyncli_blank_reg.NAME == "blank-reg"
