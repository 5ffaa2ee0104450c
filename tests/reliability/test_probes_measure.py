"""Probes of the measuring and reading commands (evaluate, profile, transcribe, inspect):
odd audio, manifests and checkpoint records that gave wrong results, hung or misled."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from dyncli.data.manifest import read_manifest
from dyncli.errors import InputError
from tests.conftest import invoke_cli, tone_manifest, write_wav

DEMO_DYNAMIC = Path(__file__).parents[2] / "dyncli" / "assets" / "demo_dynamic.ckpt"


def one_error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


# --- audio -----------------------------------------------------------------------------------


def test_resample_from_a_rate_prime_to_the_target_is_fast_and_exact_in_length() -> None:
    """99991 Hz -> 16000 Hz built a 16000 x 99991 polyphase kernel: 14 GB and 90 s for one
    second of audio (a rate near 1 MHz was killed for memory)."""
    from dyncli.data.audio import resample

    wave = torch.sin(2 * math.pi * 440 * torch.arange(99991) / 99991)
    started = time.perf_counter()
    out = resample(wave, 99991, 16000)
    assert time.perf_counter() - started < 5
    assert out.shape == (16000,) and out.dtype == wave.dtype
    ref = torch.sin(2 * math.pi * 440 * torch.arange(16000) / 16000)
    assert (out - ref)[200:-200].abs().max() < 1e-3


def test_fft_resample_agrees_with_torchaudio_on_a_usual_rate_pair() -> None:
    import torchaudio.functional as AF

    from dyncli.data.audio import _fft_resample

    wave = torch.sin(2 * math.pi * 300 * torch.arange(44100) / 44100).float()
    a, b = AF.resample(wave, 44100, 16000), _fft_resample(wave, 44100, 16000)
    assert a.shape == b.shape
    assert (a - b)[200:-200].abs().max() < 1e-3


def test_transcribe_odd_sample_rate(tiny_ckpt: Path, tmp_path: Path) -> None:
    rate = 48001  # prime to 16000
    t = np.arange(rate // 2) / rate
    sf.write(tmp_path / "odd.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    started = time.perf_counter()
    result = invoke_cli("transcribe", tiny_ckpt, tmp_path / "odd.wav")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 30


# --- manifests -------------------------------------------------------------------------------


def _two_wavs(root: Path) -> None:
    write_wav(root / "a.wav")
    write_wav(root / "b.wav", freq=300)


def test_jsonl_same_audio_with_two_transcripts_is_refused(tmp_path: Path) -> None:
    """Scored against both texts (WER 0.5 for a perfect hypothesis) without a word; Kaldi and
    LibriSpeech ids given twice were already refused."""
    _two_wavs(tmp_path)
    (tmp_path / "sub").mkdir()
    m = tmp_path / "m.jsonl"
    rows = [("a.wav", "one two"), ("b.wav", "three"), ("./sub/../a.wav", "two one")]
    m.write_text("\n".join(json.dumps({"audio_filepath": a, "text": t}) for a, t in rows))
    with pytest.raises(InputError, match="also at .*m.jsonl:1 with another transcript") as err:
        read_manifest(m)
    assert str(err.value).startswith(f"{m}:3: ")
    got = read_manifest(m, skip_bad=True)
    assert [it.audio.name for it in got.items] == ["b.wav"]  # neither line of a.wav is used
    assert len(got.skipped) == 1


def test_tsv_same_audio_through_a_symlink_with_another_transcript(tmp_path: Path) -> None:
    _two_wavs(tmp_path)
    (tmp_path / "link.wav").symlink_to(tmp_path / "a.wav")
    m = tmp_path / "m.tsv"
    m.write_text("a.wav\tone\nb.wav\ttwo\nlink.wav\tthree\n")
    with pytest.raises(InputError, match=r"m.tsv:3: audio .*link.wav is also at .*m.tsv:1"):
        read_manifest(m)


def test_same_audio_with_the_same_transcript_is_kept(tmp_path: Path) -> None:
    """A training manifest may repeat an utterance on purpose; normalisation decides sameness."""
    _two_wavs(tmp_path)
    m = tmp_path / "m.tsv"
    m.write_text("a.wav\tOne, two!\nb.wav\tthree\na.wav\tone two\n")
    assert len(read_manifest(m).items) == 3


def test_evaluate_refuses_a_manifest_with_conflicting_transcripts(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    _two_wavs(tmp_path)
    m = tmp_path / "m.tsv"
    m.write_text("a.wav\tone\na.wav\ttwo\n")
    result = invoke_cli("evaluate", tiny_ckpt, "--data", m, "--repeats", "1")
    assert result.exit_code == 2
    assert "another transcript" in one_error_line(result)


# --- checkpoints -----------------------------------------------------------------------------


def _with_point(root: Path, **point: Any) -> Path:
    payload = torch.load(DEMO_DYNAMIC, weights_only=False)
    # a blank-skip point at an exit of the bundled model, then the probe's change
    payload["method"]["operating_point"] = {
        "policy": "blank-skip",
        "threshold": 0.8,
        "layer": payload["method"]["exits"][0],
        "neighbours": 1,
    }
    payload["method"]["operating_point"].update(point)
    path = root / "bad_point.ckpt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ({"layer": 99}, "layer 99 has no CTC head"),
        ({"policy": "bogus"}, "unknown skip policy 'bogus'"),
        ({"policy": "drop", "threshold": 0.7}, "not a layer count"),
        ({"policy": "gates"}, "needs a gate predictor"),
    ],
)
def test_a_stored_operating_point_the_model_cannot_run_names_the_checkpoint(
    tmp_path: Path, point: dict[str, Any], expected: str
) -> None:
    """The error named a flag-like setting ('blank-skip layer 99 has no CTC head') the user never
    gave, not the checkpoint whose record is inconsistent, nor a way past it."""
    ckpt = _with_point(tmp_path, **point)
    write_wav(tmp_path / "a.wav")
    result = invoke_cli("transcribe", ckpt, tmp_path / "a.wav")
    line = one_error_line(result)
    assert result.exit_code == 2
    assert line.startswith(f"error: {ckpt}: the stored operating point") and expected in line
    assert "--full-depth" in line
    m = tone_manifest(tmp_path, count=2)
    result = invoke_cli("profile", ckpt, "--data", m, "--repeats", "1")
    line = one_error_line(result)
    assert line.startswith(f"error: {ckpt}: the stored operating point") and "--policy" in line
    # --full-depth still runs the model
    result = invoke_cli("transcribe", ckpt, tmp_path / "a.wav", "--full-depth")
    assert result.exit_code == 0, result.output


# --- machine output --------------------------------------------------------------------------


def test_format_json_with_json_to_dev_stdout_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    """--json - with --format json was refused, but --json /dev/stdout (or the file stdout is
    redirected to) wrote two JSON documents to stdout: not parseable."""
    fmt = "json"
    m = tone_manifest(tmp_path, count=2)
    cmd = [sys.executable, "-m", "dyncli", "evaluate", str(tiny_ckpt), "--data", str(m)]
    cmd += ["--device", "cpu", "--repeats", "1", "--format", fmt]
    out = tmp_path / "out.json"
    with out.open("w") as fh:
        done = subprocess.run([*cmd, "--json", str(out)], stdout=fh, stderr=subprocess.PIPE)
    assert done.returncode == 2
    assert done.stderr.decode().startswith(f"error: --json {out} and --format {fmt} both write")
    done = subprocess.run([*cmd, "--json", "/dev/stdout"], capture_output=True)
    assert done.returncode == 2 and done.stdout == b""
    # /dev/null is stdout's file too, harmlessly: allowed
    done = subprocess.run(
        [*cmd, "--json", "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert done.returncode == 0, done.stderr.decode()


def test_audio_shorter_than_the_manifest_duration_is_said(
    tiny_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A WAV whose header says 50 samples while 0.6 s follow (or a truncated file) was scored
    as an empty hypothesis, silently; the manifest's duration said otherwise."""
    import logging
    import struct

    write_wav(tmp_path / "ok.wav", seconds=0.6)
    data = (tmp_path / "ok.wav").read_bytes()
    at = data.index(b"data")
    (tmp_path / "lie.wav").write_bytes(data[: at + 4] + struct.pack("<I", 100) + data[at + 8 :])
    m = tmp_path / "m.jsonl"
    rows = [("ok.wav", 0.6), ("lie.wav", 0.6)]
    m.write_text(
        "\n".join(json.dumps({"audio_filepath": a, "text": "one", "duration": d}) for a, d in rows)
    )
    with caplog.at_level(logging.WARNING, logger="dyncli"):
        result = invoke_cli(
            "evaluate", tiny_ckpt, "--data", m, "--repeats", "1", "--format", "json"
        )
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records if "the manifest says" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{m}:2: ") and "lie.wav holds" in said[0]
    json.loads(result.stdout)  # stdout stays one JSON document


# --- profile gate --------------------------------------------------------------------------


def test_gate_selection_does_not_call_a_closest_miss_a_row_meeting_every_bar() -> None:
    """With no row meeting the bars, the failed gate said 'operating point blank-skip @ 0.98
    (fastest row meeting every bar)'."""
    from dyncli.measure.gate import ReleaseBars, judge

    def row(threshold: float, wer: float, speedup: float) -> dict[str, Any]:
        return {
            "policy": "blank-skip",
            "threshold": threshold,
            "wer": wer,
            "words": 500,
            "rtf": 0.01 / speedup,
            "speedup": speedup,
            "gate_dwer": wer - 0.1,
            "gate_dwer_low": wer - 0.1,
            "gate_dwer_high": wer - 0.1,
            "gate_speedup": speedup,
            "gate_speedup_low": speedup,
            "gate_speedup_high": speedup,
            "timing_pairs": 100,
        }

    rows = [row(0.5, 0.2, 1.6), row(0.9, 0.1, 1.2)]
    verdict = judge(rows, ReleaseBars(max_wer_increase=0.0, min_speedup=100.0))
    assert not verdict["passed"] and verdict["selection"].startswith("closest miss")
    verdict = judge(rows, ReleaseBars(max_wer_increase=0.0))
    assert verdict["passed"] and verdict["selection"] == "fastest row meeting every bar"


def test_profile_models_repeated_are_all_profiled_and_tsv_labels_are_lossless(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """'--models a --models b' profiled b alone (click kept the last value), and a TSV cell
    squeezed whitespace: a label 'a\\tb.ckpt' or 'm  x.ckpt' came out as a name no file has."""
    import shutil

    first, second = tmp_path / "a\tb.ckpt", tmp_path / "m  x.ckpt"
    shutil.copy(tiny_ckpt, first)
    shutil.copy(tiny_ckpt, second)
    m = tone_manifest(tmp_path, count=2)
    result = invoke_cli(
        "profile", tiny_ckpt, "--data", m, "--repeats", "1", "--models", first,
        "--models", second, "--format", "tsv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[0].split("\t")
    assert all(len(line.split("\t")) == len(header) for line in lines)
    labels = {line.split("\t")[header.index("model")] for line in lines[1:]}
    assert {"a\\tb.ckpt", "m  x.ckpt"} <= labels


def test_tsv_value_escapes_like_transcribe() -> None:
    from dyncli.cli.output import tsv_value

    assert tsv_value("a\tb\nc\\d  e") == "a\\tb\\nc\\\\d  e"


# --- --skip-bad that leaves nothing ----------------------------------------------------------


def test_transcribe_skip_bad_with_every_file_bad_fails(tiny_ckpt: Path, tmp_path: Path) -> None:
    """Every file skipped, nothing printed, exit 0: a script saw success with no transcripts."""
    (tmp_path / "x.wav").write_text("not audio")
    result = invoke_cli("transcribe", tiny_ckpt, tmp_path / "x.wav", "--skip-bad")
    assert result.exit_code == 2 and result.stdout == ""
    assert "skipped: " in result.stderr
    assert (
        result.stderr.splitlines()[-1] == "error: none of the 1 audio files could be read "
        "(each said above)"
    )


def test_evaluate_skip_bad_with_every_entry_bad_says_why(tiny_ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_text("not audio")
    m = tmp_path / "m.tsv"
    m.write_text("x.wav\tone\n")
    result = invoke_cli("evaluate", tiny_ckpt, "--data", m, "--skip-bad", "--repeats", "1")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "no utterance could be read (1 skipped; the first: " in line and "x.wav" in line


def test_a_directory_or_device_given_as_audio_is_not_called_missing(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """'adir: audio file not found' for a directory that is there sent users looking for it."""
    (tmp_path / "adir").mkdir()
    result = invoke_cli("transcribe", tiny_ckpt, tmp_path / "adir")
    assert one_error_line(result).startswith(f"error: {tmp_path / 'adir'}: a directory, not an")
    result = invoke_cli("transcribe", tiny_ckpt, "/dev/null")
    assert "/dev/null: not a regular file, so not read as audio" in one_error_line(result)
    m = tmp_path / "m.tsv"
    m.write_text("adir\tone\n")
    with pytest.raises(InputError, match=r"m.tsv:1: not a regular file: .*adir"):
        read_manifest(m)


def test_a_sample_rate_no_speech_fits_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    """A 1 Hz header (5 samples = 5 s) was upsampled and transcribed as if it were speech."""
    sf.write(tmp_path / "hz1.wav", np.full(5, 0.1, dtype=np.float32), 1)
    result = invoke_cli("transcribe", tiny_ckpt, tmp_path / "hz1.wav")
    assert result.exit_code == 2
    assert "sample rate 1 Hz is below 1000 Hz" in one_error_line(result)


def test_profile_plot_draws_a_dollar_in_a_model_name_literally(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """'--models x$\\frac$y.ckpt --plot p.png' ended in a matplotlib ParseSyntaxException
    traceback after the whole profile ran: the label was parsed as math."""
    import shutil

    pytest.importorskip("matplotlib")
    other = tmp_path / "x$\\frac$y.ckpt"
    shutil.copy(tiny_ckpt, other)
    m = tone_manifest(tmp_path, count=2)
    plot = tmp_path / "p.png"
    result = invoke_cli(
        "profile", tiny_ckpt, "--data", m, "--repeats", "1", "--models", other, "--plot", plot
    )
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_table_titles_and_labels_are_text_not_rich_markup(tiny_ckpt: Path, tmp_path: Path) -> None:
    """A checkpoint under a folder named '[/b]' ended inspect and evaluate (table output) in a
    rich MarkupError traceback; a model file 'm[red]z.ckpt' was labelled 'mz.ckpt'."""
    import shutil

    nested = tmp_path / "[" / "b]"  # the path holds '[/b]'; a name cannot
    nested.mkdir(parents=True)
    ckpt = nested / "m.ckpt"
    shutil.copy(tiny_ckpt, ckpt)
    result = invoke_cli("inspect", ckpt)
    assert result.exit_code == 0, result.output
    assert "[/b]/m.ckpt" in result.stdout  # the title wraps: its end is on one line
    m = tone_manifest(tmp_path, count=2)
    result = invoke_cli("evaluate", ckpt, "--data", m, "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "[/b]/m.ckpt" in result.stdout
    other = tmp_path / "m[red]z.ckpt"
    shutil.copy(tiny_ckpt, other)
    result = invoke_cli("profile", tiny_ckpt, "--data", m, "--repeats", "1", "--models", other)
    assert result.exit_code == 0, result.output
    assert "m[red]z.ckpt" in result.stdout
