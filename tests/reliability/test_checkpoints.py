"""Issue 17, items 7b, 13, 14, 16c and 20 (a-c, g-i): checkpoints are checked once, on load,
and every problem is one line that names the file and what is wrong.

NaN weights are refused on save and on load; each malformed field of a checkpoint record is
named; broken Hugging Face directories and models too large for memory are refused up front;
messages say what the file really is.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dyncli.checkpoint import load_checkpoint, save_checkpoint
from dyncli.errors import CheckpointError, JobFailed
from tests.conftest import invoke_cli, write_wav


def one_error_line(result: Any) -> str:
    """The single ``error: ...`` line a refused command prints (no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def payload_of(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_payload(path: Path, payload: dict[str, Any]) -> Path:
    torch.save(payload, path)
    return path


# ---------------------------------------------------------------------------------------------
# 7b: NaN weights


def test_item7b_save_refuses_nan_weights(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_ckpt)
    with torch.no_grad():
        ckpt.model.head.weight[0, 0] = float("nan")
    out = tmp_path / "nan.ckpt"
    with pytest.raises(JobFailed, match=r"1 of \d+ weight tensors hold NaN or Inf.*head\.weight"):
        save_checkpoint(out, ckpt)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left either


def test_item7b_save_refuses_float16_overflow(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_ckpt)
    with torch.no_grad():
        ckpt.model.head.bias[0] = 1e6  # finite in float32, Inf in float16
    with pytest.raises(JobFailed, match="overflow float16"):
        save_checkpoint(tmp_path / "half.ckpt", ckpt, half=True)


def test_item7b_load_refuses_nan_weights(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_ckpt)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    path = write_payload(tmp_path / "nan.ckpt", payload)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(path)
    wav = write_wav(tmp_path / "a.wav")
    line = one_error_line(invoke_cli("transcribe", path, wav))  # was: empty text, exit 0
    assert str(path) in line and name in line and "NaN or Inf" in line


def test_item7b_diverged_training_is_job_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights that went NaN without a NaN loss reach the best-epoch save: the run fails."""
    import dyncli.training.trainer as trainer
    from tests.conftest import tone_manifest

    real = trainer.save_checkpoint

    def diverged(path: Any, ckpt: Any, half: bool = False) -> None:
        with torch.no_grad():
            next(ckpt.model.parameters()).fill_(float("nan"))
        real(path, ckpt, half)

    monkeypatch.setattr(trainer, "save_checkpoint", diverged)
    data = tone_manifest(tmp_path)
    out = tmp_path / "out.ckpt"
    result = invoke_cli(
        "train", "--train", data, "--dev", data, "-o", out, "--preset", "tiny",
        "--max-steps", "1", "--epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "training diverged" in lines[0] and "NaN or Inf" in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 13: malformed checkpoint fields


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(payload: dict[str, Any]) -> None:
        target = payload
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _threshold_abc(payload: dict[str, Any]) -> None:
    payload["method"] = {
        "name": "early-exit",
        "exits": [1],
        "operating_point": {"policy": "blank-skip", "threshold": "abc", "layer": 1},
    }


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "list_state_dict": (_set("state_dict", value=[1, 2]), "'state_dict'"),
    "str_tokenizer": (_set("tokenizer", value="char"), "'tokenizer'"),
    "sample_rate_zero": (_set("config", "frontend", "sample_rate", value=0), "sample_rate"),
    "sample_rate_negative": (_set("config", "frontend", "sample_rate", value=-8000), "sample_rate"),
    "sample_rate_float": (_set("config", "frontend", "sample_rate", value=8000.5), "sample_rate"),
    "threshold_abc": (_threshold_abc, "operating_point.threshold"),
    "num_heads_zero": (_set("config", "num_heads", value=0), "num_heads"),
    "provenance_list": (_set("provenance", value=["a", "b"]), "'provenance'"),
    "metrics_str": (_set("metrics", value="good"), "'metrics'"),
    "vocab_size_str": (_set("vocab_size", value="28"), "'vocab_size'"),
    "dropout_above_one": (_set("config", "dropout", value=3.0), "dropout"),
    "normalize_unknown": (_set("config", "frontend", "normalize", value="loud"), "normalize"),
    "exits_float": (_set("method", value={"name": "early-exit", "exits": [1.5]}), "method.exits"),
    "tokenizer_symbols_int": (_set("tokenizer", "symbols", value=7), "tokenizer.symbols"),
    "conv_kernel_even": (_set("config", "conv_kernel", value=4), "does not build"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_item13_malformed_field_is_one_line(tiny_ckpt: Path, tmp_path: Path, case: str) -> None:
    edit, field = MALFORMED[case]
    payload = payload_of(tiny_ckpt)
    edit(payload)
    path = write_payload(tmp_path / f"{case}.ckpt", payload)
    line = one_error_line(invoke_cli("inspect", path))
    assert str(path) in line and field in line, line


def test_item13_validated_on_load_not_later(tiny_ckpt: Path, tmp_path: Path) -> None:
    """A bad operating point used to load fine and fail with a traceback when it was used."""
    payload = payload_of(tiny_ckpt)
    _threshold_abc(payload)
    path = write_payload(tmp_path / "op.ckpt", payload)
    with pytest.raises(CheckpointError, match="operating_point.threshold"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# 20: messages


def test_item20a_junk_is_not_called_pickled_code(tmp_path: Path) -> None:
    files = {
        "random.bin": os.urandom(4096),
        "model.json": json.dumps({"a": 1}).encode(),
        "m.jsonl": b'{"audio_filepath": "a.wav", "text": "one"}\n',
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(b"\x01" + data if name == "random.bin" else data)
        line = one_error_line(invoke_cli("inspect", path))
        assert "pickled" not in line and "not a readable checkpoint" in line, line
    assert "JSON" in one_error_line(invoke_cli("inspect", tmp_path / "m.jsonl"))


def test_item20b_missing_version_is_not_newer(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_ckpt)
    del payload["format_version"]
    line = one_error_line(invoke_cli("inspect", write_payload(tmp_path / "nv.ckpt", payload)))
    assert "newer" not in line and "None" not in line and "format_version" in line
    payload["format_version"] = "2"
    line = one_error_line(invoke_cli("inspect", write_payload(tmp_path / "sv.ckpt", payload)))
    assert "newer" not in line and "format_version" in line


def test_item20c_inspect_shows_stored_version(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_ckpt)
    payload["format_version"] = 0
    del payload["blank_id"]
    path = write_payload(tmp_path / "v0.ckpt", payload)
    result = invoke_cli("inspect", path, "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format_version"] == 0


def test_item20h_symlink_loop_is_not_not_found(tmp_path: Path) -> None:
    loop = tmp_path / "loop.ckpt"
    loop.symlink_to(loop)
    line = one_error_line(invoke_cli("inspect", loop))
    assert "not found" not in line and "loop" in line
    broken = tmp_path / "broken.ckpt"
    broken.symlink_to(tmp_path / "gone.ckpt")
    assert "broken symbolic link" in one_error_line(invoke_cli("inspect", broken))


def test_item20i_mismatch_message_is_complete(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_ckpt)
    state = payload["state_dict"]
    dropped = [k for k in sorted(state) if k.startswith("layers.")][:5]
    for key in dropped:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    state["head.bias"] = torch.zeros(3)
    line = one_error_line(invoke_cli("inspect", write_payload(tmp_path / "mm.ckpt", payload)))
    assert "5 missing" in line and "2 more" in line
    assert sum(k in line for k in dropped) == 3
    assert "1 unexpected (extra.weight)" in line
    assert "1 of another shape (head.bias stored [3]" in line


# ---------------------------------------------------------------------------------------------
# 14, 16c, 20g: Hugging Face directories


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.test_hf import tiny_dir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_dir(tmp_path_factory.mktemp("hf"), "Wav2Vec2ForCTC")


def _broken(hf_dir: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    out = tmp_path / "model"
    shutil.copytree(hf_dir, out)
    edit(out)
    return out


def _edit_json(name: str, key: str, value: Any) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        data = json.loads((d / name).read_text())
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
        (d / name).write_text(json.dumps(data))

    return edit


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


HF_BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated_safetensors": (_truncate, "model.safetensors"),
    "vocab_id_not_int": (_edit_json("vocab.json", "<unk>", "three"), "vocab.json"),
    "vocab_id_float": (_edit_json("vocab.json", "<unk>", 3.5), "vocab.json"),
    "pad_token_id_null": (_edit_json("config.json", "pad_token_id", None), "config.json"),
    "no_conv_dim": (_edit_json("config.json", "conv_dim", KeyError), "config.json"),
    "architectures_str": (
        _edit_json("config.json", "architectures", "Wav2Vec2ForCTC"),
        "config.json",
    ),
}


@pytest.mark.parametrize("case", sorted(HF_BROKEN))
def test_item14_broken_hf_directory_is_one_line(hf_dir: Path, tmp_path: Path, case: str) -> None:
    edit, name = HF_BROKEN[case]
    model = _broken(hf_dir, tmp_path, edit)
    line = one_error_line(invoke_cli("inspect", model))
    assert f"{model}/{name}" in line, line


def test_item16c_extreme_frame_rate_refused_before_building(hf_dir: Path, tmp_path: Path) -> None:
    model = _broken(hf_dir, tmp_path, _edit_json("config.json", "conv_stride", [1, 1, 1]))
    line = one_error_line(invoke_cli("inspect", model))
    assert str(model) in line and "GiB of memory" in line and "frames per second" in line


def test_item16c_estimate_passes_real_sizes() -> None:
    from dyncli.models.config import WAV2VEC2_PRESETS
    from dyncli.models.memory import wav2vec2_estimate

    base = wav2vec2_estimate(WAV2VEC2_PRESETS["base"])
    assert 49 < base["frames_per_second"] < 51  # 16 kHz over strides 5*2*2*2*2*2*2
    assert base["bytes"] < 4 * 2**30


def test_item20g_directory_message_says_what_is_missing(hf_dir: Path, tmp_path: Path) -> None:
    model = _broken(hf_dir, tmp_path, lambda d: (d / "model.safetensors").unlink())
    line = one_error_line(invoke_cli("inspect", model))
    assert "no installed plugin" not in line
    assert "huggingface reader" in line and "model.safetensors" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in one_error_line(invoke_cli("inspect", empty))
