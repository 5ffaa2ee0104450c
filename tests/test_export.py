"""``dyncli export`` (issue 20, full depth): one ONNX graph from the waveform to log-probs, run
with onnxruntime, equal to dyncli's full depth on tiny Conformer, Transformer and wav2vec2
models the tests build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dyncli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dyncli.data.text import CharTokenizer
from dyncli.export.onnx import export_onnx, greedy_transcript, token_texts
from dyncli.models.config import CONFORMER_PRESETS, TRANSFORMER_PRESETS, WAV2VEC2_PRESETS
from dyncli.registry.manager import get_backbone
from tests.conftest import invoke_cli

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

PRESETS = {
    "conformer": CONFORMER_PRESETS,
    "transformer": TRANSFORMER_PRESETS,
    "wav2vec2": WAV2VEC2_PRESETS,
}


def tiny(tmp_path: Path, backbone: str) -> Path:
    torch.manual_seed(0)
    tok = CharTokenizer.train(["one two three four five"])
    cfg = PRESETS[backbone]["tiny"]
    model = get_backbone(backbone).build(cfg, tok.vocab_size).eval()
    path = tmp_path / f"{backbone}.ckpt"
    save_checkpoint(path, Checkpoint(model=model, tokenizer=tok, backbone=backbone, config=cfg))
    return path


def reference(model: Any, wave: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        feats, frames = model.features(wave, torch.tensor([wave.shape[1]]))
        x, _ = model.embed(feats, frames)
        return model.log_probs(model.run_layers(x, None))


def with_exit(tmp_path: Path, backbone: str, cfg: Any, blank_bias: float = 0.0) -> Checkpoint:
    """A tiny random ``backbone`` model with an exit after layer 1 (its blank logit raised by
    ``blank_bias``), saved as an early-exit checkpoint and loaded back."""
    torch.manual_seed(0)
    tok = CharTokenizer.train(["one two three four five"])
    model = get_backbone(backbone).build(cfg, tok.vocab_size).eval()
    model.attach_exits([1])
    with torch.no_grad():
        model.exit_heads["1"].bias[0] += blank_bias  # type: ignore[index,operator]
    path = tmp_path / f"{backbone}-exit.ckpt"
    method = {"name": "early-exit", "exits": [1]}
    save_checkpoint(path, Checkpoint(model, tok, backbone, cfg, method=method))
    return load_checkpoint(path)


def noise(seed: int, samples: int) -> torch.Tensor:
    """(1, samples) of Gaussian noise at 0.1."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy((0.1 * rng.standard_normal((1, samples))).astype(np.float32))


def encoder_input(model: Any, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a policy's ``encode`` takes for ``wave`` (1, N): the embedded features, lengths."""
    with torch.inference_mode():
        feats, frames = model.features(wave, torch.tensor([wave.shape[1]]))
        x, lengths = model.embed(feats, frames)
    return x, lengths


def session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for backbone in PRESETS:
        ckpt = tiny(root, backbone)
        onnx_path = root / f"{backbone}.onnx"
        export_onnx(load_checkpoint(ckpt), onnx_path)
        out[backbone] = (ckpt, onnx_path)
    return out


@pytest.mark.parametrize("backbone", sorted(PRESETS))
def test_onnxruntime_equals_full_depth(exported, backbone: str) -> None:
    ckpt_path, onnx_path = exported[backbone]
    ckpt = load_checkpoint(ckpt_path)
    s = session(onnx_path)
    meta = {e.key: e.value for e in onnx.load(str(onnx_path)).metadata_props}
    tokens, blank = json.loads(meta["tokens"]), int(meta["blank_id"])
    rng = np.random.default_rng(0)
    # a wave shorter than the front end's minimum (log-mel: one STFT window; wav2vec2: the
    # convolutional extractor's receptive field) is zero-padded up to it, in both runtimes
    least = int(ckpt.model.frontend.min_samples)
    for n in [1, least - 1, least, least + 1, 3000, 8000, 17001]:
        wave = torch.from_numpy((0.1 * rng.standard_normal((1, n))).astype(np.float32))
        ref = reference(ckpt.model, wave)
        out, layers = s.run(None, {"wave": wave.numpy()})
        assert out.shape == tuple(ref.shape), (n, out.shape, ref.shape)
        assert layers.dtype == np.int64 and layers.shape == out.shape[:2]
        assert (layers == ckpt.model.num_layers).all()
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=0)
        ours = greedy_transcript(ref[0], tokens, blank)
        assert greedy_transcript(out[0], tokens, blank) == ours
        ids = ref[0].argmax(-1).tolist()
        collapsed = [k for j, k in enumerate(ids) if k != blank and (j == 0 or ids[j - 1] != k)]
        assert ours == ckpt.tokenizer.decode(collapsed)


@pytest.mark.parametrize("backbone", sorted(PRESETS))
def test_silence_gives_the_same_log_probs(exported, backbone: str) -> None:
    """A constant wave (digital silence, a DC offset): the per-utterance feature normalisation
    makes its bands exactly 0 in both runtimes (rounding noise of the mean, divided by
    sqrt(1e-5), once made them differ by 0.1 in log-probs). wav2vec2's convolutional feature
    extractor normalises each channel over time (torchaudio's GroupNorm): on a constant wave
    that is rounding noise over sqrt(1e-5) in either runtime, so there the transcripts are
    compared and the log-probs only loosely."""
    ckpt_path, onnx_path = exported[backbone]
    ckpt = load_checkpoint(ckpt_path)
    s = session(onnx_path)
    tokens = token_texts(ckpt.tokenizer, ckpt.model.head.out_features, ckpt.model.blank_id)
    for value in (0.0, 1e-3, -0.25):
        wave = torch.full((1, 6000), value)
        out, _ = s.run(None, {"wave": wave.numpy()})
        ref = reference(ckpt.model, wave)
        tol = 1e-2 if backbone == "wav2vec2" else 1e-4
        np.testing.assert_allclose(out, ref.numpy(), atol=tol, rtol=0)
        blank = ckpt.model.blank_id
        assert greedy_transcript(out[0], tokens, blank) == greedy_transcript(ref[0], tokens, blank)


def test_metadata_says_how_to_decode(exported) -> None:
    ckpt_path, onnx_path = exported["conformer"]
    ckpt = load_checkpoint(ckpt_path)
    model = onnx.load(str(onnx_path))
    meta = {e.key: e.value for e in model.metadata_props}
    assert meta["sample_rate"] == str(ckpt.model.sample_rate)
    assert meta["blank_id"] == "0" and meta["decode"] == "greedy-ctc"
    assert meta["policy"] == "static" and meta["threshold"] == ""
    assert meta["settings"] == "{}"
    tokens = json.loads(meta["tokens"])
    assert len(tokens) == ckpt.model.head.out_features and tokens[0] == ""
    assert tokens[1:6] == list(ckpt.tokenizer.to_state()["symbols"])[:5]
    assert [i.name for i in model.graph.input] == ["wave"]
    assert [o.name for o in model.graph.output] == ["log_probs", "frame_layers"]
    # no stack traces (local paths) in node metadata
    assert not any(n.metadata_props for n in model.graph.node)
    assert str(Path.cwd()) not in model.SerializeToString().decode("latin-1")


def test_sentencepiece_tokens_decode_like_the_tokenizer() -> None:
    from dyncli.assets import DEMO_STATIC

    ckpt = load_checkpoint(DEMO_STATIC)
    tokens = token_texts(ckpt.tokenizer, ckpt.model.head.out_features, ckpt.model.blank_id)
    for ids in ([4, 5, 9], [2, 2, 3], [7]):
        scores = torch.full((len(ids), len(tokens)), -10.0)
        for t, k in enumerate(ids):
            scores[t, k] = 0.0
        expected = ckpt.tokenizer.decode(
            [k for j, k in enumerate(ids) if j == 0 or ids[j - 1] != k]
        )
        assert greedy_transcript(scores, tokens, ckpt.model.blank_id) == expected


def test_cli_exports_and_refuses(exported, tmp_path: Path) -> None:
    ckpt_path, _ = exported["conformer"]
    out = tmp_path / "m.onnx"
    result = invoke_cli("export", ckpt_path, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "exported" in result.stderr
    same = invoke_cli("export", ckpt_path, "-o", ckpt_path)
    assert same.exit_code == 2 and "destroy the input" in same.stderr
    pt2 = invoke_cli("export", ckpt_path, "-o", tmp_path / "m.pt2", "--format", "pt2")
    assert pt2.exit_code == 2 and "weights_only=False" in pt2.stderr
    both = invoke_cli("export", ckpt_path, "-o", out, "--full-depth", "--threshold", "0.9")
    assert both.exit_code == 2 and "drop --threshold" in both.stderr


def test_a_policy_that_cannot_export_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy without an exportable forward (a plugin's, say; drop stands in for one)."""
    from dyncli.assets import DEMO_DYNAMIC
    from dyncli.methods.drop.policy import DropLayers

    monkeypatch.delattr(DropLayers, "export_forward")
    out = tmp_path / "d.onnx"
    result = invoke_cli("export", DEMO_DYNAMIC, "-o", out, "--policy", "drop", "--threshold", "6")
    assert result.exit_code == 2 and "cannot be exported yet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("backbone", ["conformer", "transformer"])
def test_blank_skip_inside_the_graph_equals_dyncli(tmp_path: Path, backbone: str) -> None:
    """blank-skip exported through its own export_forward: the same log-probs and frames as
    dyncli's BlankSkip, whether some, none or all frames skip."""
    from dyncli.dynamic import build_policy

    # a blank-leaning exit, so a threshold splits the frames
    ckpt = with_exit(tmp_path, backbone, PRESETS[backbone]["tiny"], blank_bias=2.0)
    rng = np.random.default_rng(1)
    waves = [
        torch.from_numpy((0.1 * rng.standard_normal((1, n))).astype(np.float32))
        for n in (50, 4000, 9000)
    ]
    for threshold in (1e-6, 0.5, 0.8123456789, 1.0):
        policy = build_policy("blank-skip", threshold, layer=1, neighbours=1)
        out = tmp_path / f"bs-{threshold}.onnx"
        result = export_onnx(
            ckpt, out, policy=policy, policy_name="blank-skip", threshold=threshold
        )
        assert result.policy == "blank-skip" and result.threshold == threshold
        meta = {e.key: e.value for e in onnx.load(str(out)).metadata_props}
        assert float(meta["threshold"]) == threshold  # exactly the graph's, not rounded
        s = session(out)
        for wave in waves:
            x, lengths = encoder_input(ckpt.model, wave)
            with torch.inference_mode():
                ref = policy.encode(ckpt.model, x, lengths)
            got, layers = s.run(None, {"wave": wave.numpy()})
            np.testing.assert_allclose(got, ref.log_probs.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_array_equal(layers, ref.frame_layers.numpy())
    meta = {e.key: e.value for e in onnx.load(str(out)).metadata_props}
    assert meta["policy"] == "blank-skip" and meta["threshold"] == "1.0"


@pytest.mark.parametrize("criterion", ["entropy", "posterior"])
def test_early_exit_inside_the_graph_equals_dyncli(tmp_path: Path, criterion: str) -> None:
    """Early exit exported through its own export_forward (a torch.cond per exit): the same
    log-probs as dyncli's EarlyExit whether the utterance leaves at the exit or runs to the
    end."""
    from dyncli.dynamic import build_policy

    ckpt = with_exit(tmp_path, "conformer", CONFORMER_PRESETS["tiny"])
    wave = noise(2, 7000)
    x, lengths = encoder_input(ckpt.model, wave)
    # one threshold that every exit passes, one that none does
    for threshold in (1.0, 0.0) if criterion == "entropy" else (0.0, 1.0):
        policy = build_policy(f"early-exit-{criterion}", threshold)
        with torch.inference_mode():
            out = policy.encode(ckpt.model, x, lengths)
        onnx_path = tmp_path / f"ee-{threshold}.onnx"
        export_onnx(ckpt, onnx_path, policy=policy, policy_name=policy.name, threshold=threshold)
        got, layers = session(onnx_path).run(None, {"wave": wave.numpy()})
        np.testing.assert_allclose(got, out.log_probs.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(layers, out.frame_layers.numpy())
        depth = int(out.frame_layers.max())
        leaves = threshold == (1.0 if criterion == "entropy" else 0.0)
        assert depth == (1 if leaves else ckpt.model.num_layers)


def test_cli_exports_a_blank_skip_point(exported, tmp_path: Path) -> None:
    from dyncli.assets import DEMO_DYNAMIC

    out = tmp_path / "bs.onnx"
    args = ("--policy", "blank-skip", "--threshold", "0.9", "--skip-layer", "4")
    result = invoke_cli("export", DEMO_DYNAMIC, "-o", out, *args, "--skip-neighbours", "2")
    assert result.exit_code == 0, result.output
    meta = {e.key: e.value for e in onnx.load(str(out)).metadata_props}
    assert meta["policy"] == "blank-skip" and meta["threshold"] == "0.9"
    assert json.loads(meta["settings"]) == {"layer": 4, "neighbours": 2, "bucket": 0}
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "If" in ops


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, exported, tmp_path) -> None:
    import builtins

    real = builtins.__import__

    def no_onnxscript(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "onnxscript":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    result = invoke_cli(
        "export", exported["conformer"][0], "-o", tmp_path / "x.onnx", "--full-depth"
    )
    assert result.exit_code == 2
    assert "pip install 'dyncli[export]'" in result.stderr


def test_example_runs_without_dyncli_or_torch(tmp_path: Path) -> None:
    """examples/deploy/transcribe_onnx.py in a process where `import dyncli` and `import torch`
    fail gives dyncli's own full-depth transcripts."""
    import subprocess
    import sys

    from dyncli.assets import DEMO_STATIC, EVAL_MANIFEST

    model = tmp_path / "static.onnx"
    export_onnx(load_checkpoint(DEMO_STATIC), model)
    rows = [json.loads(x) for x in EVAL_MANIFEST.read_text().splitlines() if x.strip()][:12]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps({**r, "audio_filepath": str(EVAL_MANIFEST.parent / r["audio_filepath"])})
            for r in rows
        )
    )
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(  # runs first: a finder that refuses them
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('dyncli', 'torch', 'torchaudio'):\n"
        "            raise ImportError(f'no {name} here')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    script = Path(__file__).resolve().parents[1] / "examples" / "deploy" / "transcribe_onnx.py"
    probe = subprocess.run(
        [sys.executable, "-c", "import dyncli"],
        env={"PYTHONPATH": str(blocked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "no dyncli here" in probe.stderr
    run = subprocess.run(
        [sys.executable, str(script), str(model), "--manifest", str(manifest)],
        env={"PYTHONPATH": str(blocked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    got = [line.split("\t", 1)[1] for line in run.stdout.splitlines()]
    ckpt = load_checkpoint(DEMO_STATIC)
    expected = []
    for r in rows:
        from dyncli.data.audio import load_audio

        wave = load_audio(EVAL_MANIFEST.parent / r["audio_filepath"], ckpt.model.sample_rate)
        ref = reference(ckpt.model, wave[None])
        ids = ref[0].argmax(-1).tolist()
        collapsed = [k for j, k in enumerate(ids) if k != 0 and (j == 0 or ids[j - 1] != k)]
        expected.append(ckpt.tokenizer.decode(collapsed))
    assert got == expected
    assert "WER" in run.stderr


@pytest.mark.parametrize(
    ("backbone", "predictor"), [("conformer", "global"), ("transformer", "local")]
)
def test_gates_inside_the_graph_equal_dyncli(tmp_path: Path, backbone: str, predictor: str) -> None:
    """I3D gates exported through GatePolicy.export_forward (a torch.cond per gated block):
    dyncli's log-probs whether every block is open, some are, or none is."""
    from dyncli.dynamic import build_policy
    from dyncli.methods.gates.predictor import attach_gates, gates_method

    torch.manual_seed(0)
    tok = CharTokenizer.train(["one two three four five"])
    cfg = PRESETS[backbone]["tiny"]
    model = get_backbone(backbone).build(cfg, tok.vocab_size).eval()
    gp = attach_gates(model, predictor)
    with torch.no_grad():  # spread the gate logits so that thresholds split the blocks
        last = gp.nets[-1][2]
        last.bias.copy_(torch.linspace(-3.0, 3.0, last.bias.numel()))
    path = tmp_path / "gates.ckpt"
    save_checkpoint(
        path,
        Checkpoint(model, tok, backbone, cfg, method=gates_method(predictor, 0.5, 1.0, 1.0, 32)),
    )
    ckpt = load_checkpoint(path)
    wave = noise(3, 9000)
    x, lengths = encoder_input(ckpt.model, wave)
    opened = []
    for threshold in (1e-6, 0.5, 1.0):
        policy = build_policy("gates", threshold)
        with torch.inference_mode():
            ref, decision = policy.run(ckpt.model, x, lengths)
        opened.append(float(decision.open.float().mean()))
        out = tmp_path / f"g-{threshold}.onnx"
        export_onnx(ckpt, out, policy=policy, policy_name="gates", threshold=threshold)
        got, layers = session(out).run(None, {"wave": wave.numpy()})
        np.testing.assert_allclose(got, ref.log_probs.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(layers, ref.frame_layers.numpy())
    assert opened[0] == 1.0 and 0.0 < opened[1] < 1.0 and opened[2] == 0.0


def test_drop_inside_the_graph_equals_dyncli(exported, tmp_path: Path) -> None:
    from dyncli.dynamic import build_policy

    ckpt = load_checkpoint(exported["conformer"][0])
    wave = noise(4, 7000)
    policy = build_policy("drop", 1)
    x, lengths = encoder_input(ckpt.model, wave)
    with torch.inference_mode():
        ref = policy.encode(ckpt.model, x, lengths)
    out = tmp_path / "drop.onnx"
    export_onnx(ckpt, out, policy=policy, policy_name="drop", threshold=1)
    got, layers = session(out).run(None, {"wave": wave.numpy()})
    np.testing.assert_allclose(got, ref.log_probs.numpy(), atol=1e-4, rtol=0)
    assert (layers == 1).all() and ckpt.model.num_layers > 1


def test_wavlm_blank_skip_inside_the_graph_equals_dyncli(tmp_path: Path) -> None:
    """WavLM's relative position bias: the kept frames run the later layers with their
    positions in the full sequence, inside the graph as in dyncli, whether some or all frames
    skip."""
    import dataclasses

    from dyncli.dynamic import build_policy

    ckpt = with_exit(
        tmp_path, "wav2vec2", dataclasses.replace(WAV2VEC2_PRESETS["tiny"], wavlm=True)
    )
    wave = noise(0, 9000)
    x, lengths = encoder_input(ckpt.model, wave)
    with torch.inference_mode():
        blank = ckpt.model.exit_log_probs(1, ckpt.model.run_layers(x, None, range(1)))[0, :, 0]
    middle = float(blank.exp().median())  # about half the frames skip
    skipped = []
    for threshold in (1e-6, middle):  # (every frame kept: tested on the other backbones)
        policy = build_policy("blank-skip", threshold, layer=1, neighbours=0)
        with torch.inference_mode():
            ref = policy.encode(ckpt.model, x, lengths)
        out = tmp_path / "wl.onnx"
        export_onnx(ckpt, out, policy=policy, policy_name="blank-skip", threshold=threshold)
        got, layers = session(out).run(None, {"wave": wave.numpy()})
        np.testing.assert_allclose(got, ref.log_probs.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(layers, ref.frame_layers.numpy())
        skipped.append(float((layers < ckpt.model.num_layers).mean()))
    assert skipped[0] == 1.0 and 0.0 < skipped[1] < 1.0
