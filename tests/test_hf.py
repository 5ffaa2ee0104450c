"""plugins/dyncli-hf: Hugging Face CTC model directories, built here with transformers itself
(no network): static forward and transcripts match transformers; convert and profile run."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "dyncli-hf"))
import dyncli_hf  # noqa: E402

from dyncli.checkpoint import load_checkpoint  # noqa: E402
from dyncli.decoding import greedy_ctc  # noqa: E402
from tests.conftest import invoke_cli, write_wav  # noqa: E402

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
VOCAB.update({c: 5 + i for i, c in enumerate("EOTNWRH")})
RATE = 16000


def tiny_dir(root: Path, arch: str, stable: bool = False, bin_only: bool = False) -> Path:
    """A tiny random model, its tokenizer and feature extractor, saved by transformers."""
    out = root / f"{arch}-{'stable' if stable else 'base'}{'-bin' if bin_only else ''}"
    common = {
        "vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 2, "intermediate_size": 48, "conv_dim": (16, 16, 16),
        "conv_stride": (5, 2, 2), "conv_kernel": (10, 3, 2), "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 4, "pad_token_id": 0, "do_stable_layer_norm": stable,
        "feat_extract_norm": "layer" if stable else "group",
    }  # fmt: skip
    torch.manual_seed(1)
    if arch == "Wav2Vec2ForCTC":
        model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**common))
    elif arch == "WavLMForCTC":
        config = transformers.WavLMConfig(**common, num_buckets=16, max_bucket_distance=64)
        model = transformers.WavLMForCTC(config)
    else:
        model = transformers.HubertForCTC(transformers.HubertConfig(**common))
    with torch.no_grad():
        model.lm_head.bias.normal_(0, 2.0)  # varied argmax paths, not one token everywhere
    model.save_pretrained(out)
    if bin_only:  # the older format: a torch.save'd state dict instead of safetensors
        torch.save(model.state_dict(), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    vocab_file = root / "vocab.json"
    vocab_file.write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(vocab_file))
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True
    )
    transformers.Wav2Vec2Processor(
        feature_extractor=extractor, tokenizer=tokenizer
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.mark.parametrize(
    ("arch", "stable"),
    [
        ("Wav2Vec2ForCTC", False),
        ("Wav2Vec2ForCTC", True),
        ("HubertForCTC", False),
        ("WavLMForCTC", False),
        ("WavLMForCTC", True),
    ],
)
def test_imported_model_matches_transformers(root: Path, arch: str, stable: bool) -> None:
    path = tiny_dir(root, arch, stable)
    ckpt = dyncli_hf.import_model(path)
    hf = getattr(transformers, arch).from_pretrained(path).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(path)
    torch.manual_seed(2)
    waves = [torch.randn(12000) * 0.1, torch.randn(9000) * 0.05]
    model = ckpt.model.eval()
    assert model.blank_id == VOCAB["<pad>"] and ckpt.config.normalize_waveform
    for wave in waves:
        inputs = processor(wave.numpy(), sampling_rate=RATE, return_tensors="pt")
        with torch.inference_mode():
            logits = hf(inputs.input_values).logits
            lp, lengths = model(wave[None], torch.tensor([wave.shape[0]]))
        torch.testing.assert_close(lp, torch.log_softmax(logits, dim=-1), atol=1e-4, rtol=1e-4)
        expected = processor.batch_decode(logits.argmax(dim=-1))[0]
        got = ckpt.tokenizer.decode(greedy_ctc(lp, lengths, model.blank_id)[0])
        assert got == expected


def test_bin_weights_load_and_pickled_code_is_refused(root: Path) -> None:
    path = tiny_dir(root, "Wav2Vec2ForCTC", bin_only=True)
    assert (path / "pytorch_model.bin").is_file() and not (path / "model.safetensors").exists()
    assert load_checkpoint(path).provenance["weights"] == "pytorch_model.bin"

    class Boom:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    evil = root / "evil"
    evil.mkdir()
    for name in ("config.json", "vocab.json", "tokenizer_config.json"):
        (evil / name).write_text((path / name).read_text())
    torch.save({"x": Boom()}, evil / "pytorch_model.bin")
    from dyncli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)


def test_unsupported_architecture_is_one_line(root: Path, tmp_path: Path) -> None:
    path = tiny_dir(root, "Wav2Vec2ForCTC")
    other = tmp_path / "data2vec"
    other.mkdir()
    for f in path.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["Data2VecAudioForCTC"]
    (other / "config.json").write_text(json.dumps(cfg))
    result = invoke_cli("inspect", other)
    assert result.exit_code == 2 and "'Data2VecAudioForCTC' is not supported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_import_convert_profile_and_transcribe_a_directory(root: Path, tmp_path: Path) -> None:
    path = tiny_dir(root, "HubertForCTC")
    out = tmp_path / "imported.ckpt"
    result = invoke_cli("import", path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "blank id 0" in result.output
    assert load_checkpoint(out).model.blank_id == 0
    shown = invoke_cli("inspect", path)
    assert shown.exit_code == 0 and "wav2vec2" in shown.output
    assert "HubertForCTC from" in shown.output  # the imported row says from where
    rows = []
    for i in range(4):
        write_wav(tmp_path / f"u{i}.wav", seconds=0.6 + 0.1 * i, rate=RATE, freq=300 + 80 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": ["one", "two", "ten", "tree"][i]})
    data = tmp_path / "m.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    needs_exits = invoke_cli("profile", path, "--data", data, "--repeats", "1")
    assert needs_exits.exit_code == 2 and "convert" in needs_exits.stderr
    dyn = tmp_path / "dyn.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke_cli(
            "convert", path, "-o", dyn, "--exits", "1,2", "--train", data, "--dev", data,
            "--max-steps", "1", "--epochs", "1", "--threads", "1",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_checkpoint(dyn).model.blank_id == 0
    result = invoke_cli("profile", dyn, "--data", data, "--repeats", "1", "--thresholds", "0.9")
    assert result.exit_code == 0, result.output
    result = invoke_cli("transcribe", path, tmp_path / "u0.wav")
    assert result.exit_code == 0, result.output


def test_unmapped_names_warn_options_refuse_and_safetensors_wins(root: Path, tmp_path) -> None:
    path = tiny_dir(root, "Wav2Vec2ForCTC")
    with pytest.warns(UserWarning, match=r"left unmapped: .*masked_spec_embed"):
        dyncli_hf.import_model(path)
    both = tmp_path / "both"
    both.mkdir()
    for f in path.iterdir():
        (both / f.name).write_bytes(f.read_bytes())

    class Boom:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"x": Boom()}, both / "pytorch_model.bin")  # never read: safetensors is there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_checkpoint(both).provenance["weights"] == "model.safetensors"
    cfg = json.loads((both / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (both / "config.json").write_text(json.dumps(cfg))
    result = invoke_cli("inspect", both)
    assert result.exit_code == 2 and "hidden_act='relu' is not supported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
