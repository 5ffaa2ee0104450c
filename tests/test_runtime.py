"""``--runtime onnxruntime`` and ``.onnx`` model files in ``evaluate``, ``transcribe`` and
``profile`` (issue 20): the exported graph gives dyncli's transcripts, depths and WER, and the
profile times it beside dyncli eager in the same rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import WORDS, invoke_cli, write_wav

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict[str, Path]:
    """A tiny Conformer with exits after layers 1 and 2 (the first blank-heavy, so blank-skip
    skips some frames and keeps others), four utterances, and its blank-skip point at 0.35
    exported (P(blank) at exit 1 lies between 0.32 and 0.41 on these tones)."""
    from dyncli.checkpoint import load_checkpoint, save_checkpoint
    from dyncli.training import ExitTraining, early_exit_method

    root = tmp_path_factory.mktemp("runtime")
    rows = []
    for i in range(4):
        write_wav(root / f"u{i}.wav", seconds=0.5 + 0.25 * i, freq=300 + 90 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(WORDS[: 1 + i % 3])})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    ckpt = load_checkpoint(tiny_ckpt)
    torch.manual_seed(1)  # the exit heads, whatever ran before
    ckpt.model.attach_exits([1, 2])
    with torch.no_grad():
        ckpt.model.exit_heads["1"].bias[0] += 2.0
    ckpt.method = early_exit_method(ExitTraining(exits=[1, 2]), training="fine-tune")
    dyn = root / "dyn.ckpt"
    save_checkpoint(dyn, ckpt)
    onnx_path = root / "bs.onnx"
    args = ("--policy", "blank-skip", "--threshold", "0.35")
    result = invoke_cli("export", dyn, "-o", onnx_path, *args)
    assert result.exit_code == 0, result.output
    return {"ckpt": dyn, "data": manifest, "onnx": onnx_path, "root": root, "static": tiny_ckpt}


POINT = ("--policy", "blank-skip", "--threshold", "0.35")


def _evaluate(*args: object) -> dict:
    result = invoke_cli("evaluate", *args, "--repeats", "1", "--json", "-")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evaluate_an_onnx_file_gives_the_checkpoint_s_figures(setup) -> None:
    eager = _evaluate(setup["ckpt"], "--data", setup["data"], *POINT)
    graph = _evaluate(setup["onnx"], "--data", setup["data"])
    on_the_fly = _evaluate(
        setup["ckpt"], "--data", setup["data"], *POINT, "--runtime", "onnxruntime"
    )
    for report in (graph, on_the_fly):
        assert report["model"]["runtime"] == "onnxruntime"
        assert report["result"]["wer"] == eager["result"]["wer"]
        assert report["result"]["cer"] == eager["result"]["cer"]
        assert report["run"]["policy"] == "blank-skip" and report["run"]["threshold"] == 0.35
    assert eager["model"]["runtime"] == "torch"
    assert graph["run"]["source"] == "inside the ONNX graph"
    assert graph["run"]["config"]["layer"] == 1  # the exit nearest mid-depth, resolved


def test_transcribe_an_onnx_file_prints_the_checkpoint_s_transcripts(setup) -> None:
    audio = sorted(setup["root"].glob("u*.wav"))
    eager = invoke_cli("transcribe", setup["ckpt"], *audio, *POINT)
    graph = invoke_cli("transcribe", setup["onnx"], *audio)
    assert eager.exit_code == 0 and graph.exit_code == 0, graph.output
    assert graph.stdout == eager.stdout and len(graph.stdout.splitlines()) == len(audio)
    assert "inside the ONNX graph" in graph.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("evaluate", "{onnx}", "--full-depth"), "runs the policy inside it; --full-depth"),
        (("evaluate", "{onnx}", "--threshold", "0.3"), "runs the policy inside it; --threshold"),
        (("transcribe", "{onnx}", "{wav}", "--runtime", "torch"), "drop --runtime torch"),
        (("evaluate", "{ckpt}", "--runtime", "onnxruntime", "--device", "cuda"), "on the CPU"),
        (("evaluate", "{garbage}"), "not an ONNX model onnxruntime can load"),
        (("evaluate", "{foreign}"), "not a dyncli export"),
        (("transcribe", "{broken}", "{wav}"), "onnxruntime failed on a 4000-sample wave"),
        (("profile", "{onnx}"), "profile needs the checkpoint"),
        (("profile", "{ckpt}", "--runtime", "onnxruntime", "--batch-size", "2"), "one utterance"),
        (("profile", "{ckpt}", "--runtime", "onnxruntime", "--baseline", "{ckpt2}"), "--baseline"),
        (
            ("profile", "{ckpt}", "--runtime", "onnxruntime", "--models", "{ckpt2}"),
            "CHECKPOINT only",
        ),
        (("profile", "{static}", "--models", "{onnx}", "--policy", "drop"), "not exported from"),
    ],
)
def test_what_onnxruntime_cannot_run_is_refused_in_one_line(setup, args, message) -> None:
    import onnx
    from onnx import TensorProto, helper

    root = setup["root"]
    garbage = root / "garbage.onnx"
    garbage.write_text("not a model")
    broken = root / "broken.onnx"  # dyncli's metadata on a graph that fails when run
    node = helper.make_node("Reshape", ["wave", "shape"], ["log_probs"])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [7, 7])
    wave_in = helper.make_tensor_value_info("wave", TensorProto.FLOAT, [1, None])
    lp_out = helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [7, 7])
    model = helper.make_model(helper.make_graph([node], "g", [wave_in], [lp_out], [shape]))
    meta = {"sample_rate": "8000", "blank_id": "0", "tokens": "[]", "decode": "greedy-ctc"}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, broken)
    foreign = root / "foreign.onnx"  # a valid ONNX model without dyncli's metadata
    node = helper.make_node("Identity", ["wave"], ["log_probs"])
    io = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None])
        for n in ("wave", "log_probs")
    ]
    onnx.save(helper.make_model(helper.make_graph([node], "g", io[:1], io[1:])), foreign)
    ckpt2 = root / "copy.ckpt"
    ckpt2.write_bytes(setup["ckpt"].read_bytes() + b"")  # same bytes, another file
    names = {
        "onnx": setup["onnx"],
        "ckpt": setup["ckpt"],
        "ckpt2": ckpt2,
        "garbage": garbage,
        "foreign": foreign,
        "broken": broken,
        "wav": root / "u0.wav",
        "static": setup["static"],
    }
    argv = [str(a).format(**names) for a in args]
    if argv[0] in ("evaluate", "profile"):
        argv += ["--data", str(setup["data"])]
    result = invoke_cli(*argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_profile_runtime_onnxruntime_times_both_runtimes_in_one_table(setup) -> None:
    result = invoke_cli(
        "profile", setup["ckpt"], "--data", setup["data"], "--runtime", "onnxruntime",
        "--policy", "blank-skip", "--thresholds", "0.35", "--repeats", "2", "--json", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    static, rows = report["static"], report["rows"]
    assert report["timing"]["runtime"] == "onnxruntime"
    assert (static["runtime"], static["threshold"], static["speedup"]) == ("onnxruntime", None, 1.0)
    assert [(r["runtime"], r["threshold"]) for r in rows] == [
        ("onnxruntime", 0.35),
        ("torch", None),
        ("torch", 0.35),
    ]
    ort_point, eager_full, eager_point = rows
    # the graph runs what dyncli runs: the same transcripts, the same layers on the same frames
    assert static["transcripts_differ_from_torch"] == 0
    assert ort_point["transcripts_differ_from_torch"] == 0
    assert eager_point["transcripts_differ_from_torch"] is None
    assert ort_point["wer"] == eager_point["wer"] and static["wer"] == eager_full["wer"]
    assert ort_point["avg_layers"] == pytest.approx(eager_point["avg_layers"])
    assert 0 < ort_point["skipped_frame_fraction"] < 1
    assert ort_point["skipped_frame_fraction"] == pytest.approx(
        eager_point["skipped_frame_fraction"]
    )
    assert ort_point["flops_ratio"] == eager_point["flops_ratio"] < 1
    # one call per graph: no encoder time of its own
    assert static["encoder_speedup"] is None and ort_point["encoder_speedup"] is None
    assert eager_point["encoder_speedup"] is None  # against onnxruntime's full depth
    assert all(r["timing_pairs"] == 8 for r in [static, *rows])  # 4 utterances x 2 rounds
    assert report["gate"]["operating_point"]["runtime"] == "onnxruntime"


def test_profile_models_takes_an_exported_file(setup) -> None:
    result = invoke_cli(
        "profile", setup["ckpt"], "--data", setup["data"], "--policy", "blank-skip",
        "--thresholds", "0.35", "--models", setup["onnx"], "--repeats", "1", "--json", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["static"]["runtime"] == "torch"
    by = {(r.get("model"), r["runtime"], r["threshold"]): r for r in report["rows"]}
    graph = by[("bs.onnx", "onnxruntime", 0.35)]
    eager = by[("dyn.ckpt", "torch", 0.35)]
    assert graph["policy"] == "blank-skip" and graph["transcripts_differ_from_torch"] == 0
    assert graph["wer"] == eager["wer"] and graph["avg_layers"] == pytest.approx(
        eager["avg_layers"]
    )
    assert graph["dwer"] == eager["dwer"]  # both against the checkpoint's full depth
    assert graph["encoder_speedup"] is None and eager["encoder_speedup"] is not None


def test_profile_refuses_a_policy_that_cannot_export(setup, monkeypatch) -> None:
    """A policy without an exportable forward (a plugin's; drop stands in for one): one line,
    exit 2, with one --policy; left out with a warning among several."""
    from dyncli.methods.drop.policy import DropLayers

    monkeypatch.delattr(DropLayers, "export_forward")
    args = ("profile", setup["ckpt"], "--data", setup["data"], "--runtime", "onnxruntime")
    result = invoke_cli(*args, "--policy", "drop", "--thresholds", "1")
    assert result.exit_code == 2 and "cannot be exported yet" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
