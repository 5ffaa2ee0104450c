"""Issue 17, items 5, 8b, 16b and 17: manifests that would be read as something they are not,
transcribe under torchrun, transcribe output that a file name could break, and progress."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from dyncli.data.manifest import read_manifest
from dyncli.errors import InputError
from tests.conftest import invoke_cli, tone_manifest, write_wav


def one_error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def refused(path: Path, expected: str, line: int, file: str = "") -> list[str]:
    """``path`` is refused naming the file (``path`` or ``path/file``) and line; with skip_bad
    the line is skipped and said."""
    with pytest.raises(InputError, match=expected) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path / file if file else path}:{line}: ")
    return read_manifest(path, skip_bad=True).skipped


def jsonl(root: Path, *rows: object) -> Path:
    write_wav(root / "ok.wav")
    m = root / "m.jsonl"
    good = json.dumps({"audio_filepath": "ok.wav", "text": "one"})
    m.write_text("\n".join([good, *(r if isinstance(r, str) else json.dumps(r) for r in rows)]))
    return m


# -- item 5: manifests -------------------------------------------------------------------------


def test_item5_null_text_refused(tmp_path: Path) -> None:
    m = jsonl(tmp_path, {"audio_filepath": "ok.wav", "text": None})
    skipped = refused(m, "'text' must be a string, got a JSON null", 2)
    assert len(skipped) == 1 and skipped[0].startswith(f"{m}:2:")


def test_item5_numeric_text_refused(tmp_path: Path) -> None:
    m = jsonl(tmp_path, {"audio_filepath": "ok.wav", "text": 85})
    refused(m, "'text' must be a string, got a JSON number", 2)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("[1, 2]", "expected a JSON object per line, got a JSON array"),
        ('"ok.wav one"', "expected a JSON object per line, got a JSON string"),
        ({"audio_filepath": None, "text": "one"}, "'audio_filepath' must be a string"),
        ({"audio_filepath": 7, "text": "one"}, "'audio_filepath' must be a string"),
        ({"audio_filepath": "ok.wav"}, r"missing: text"),
        ({"audio_filepath": "ok.wav", "text": "one", "duration": -1.5}, "'duration' must be"),
        ({"audio_filepath": "ok.wav", "text": "one", "duration": "2.0"}, "'duration' must be"),
        ({"audio_filepath": "ok.wav", "text": "one", "duration": True}, "'duration' must be"),
        ('{"audio_filepath": "ok.wav", "text": "one", "duration": NaN}', "'duration' must be"),
        ('{"audio_filepath": "ok.wav", "text": "one", "text": "two"}', "'text' appears twice"),
    ],
)
def test_item5_jsonl_bad_lines_refused(tmp_path: Path, row: object, expected: str) -> None:
    refused(jsonl(tmp_path, row), expected, 2)


def test_item5_jsonl_good_duration_kept(tmp_path: Path) -> None:
    m = jsonl(tmp_path, {"audio_filepath": "ok.wav", "text": "one", "duration": 0.6})
    assert [it.duration for it in read_manifest(m).items] == [None, 0.6]


def test_item5_tsv_third_column_refused(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "ok.wav")
    m = tmp_path / "m.tsv"
    m.write_text(f"{wav}\tone\n{wav}\ttwo\tspeaker7\n")
    skipped = refused(m, "2 tab-separated columns\\), found 3", 2)
    assert len(skipped) == 1
    assert [it.text for it in read_manifest(m, skip_bad=True).items] == ["one"]


def test_item5_tsv_header_after_bom_and_blank_line(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav")
    m = tmp_path / "m.tsv"
    m.write_bytes("\ufeff\npath\ttext\nok.wav\tone\n".encode())
    assert [it.text for it in read_manifest(m).items] == ["one"]


def kaldi(root: Path, scp: str, text: str) -> Path:
    d = root / "kaldi"
    for name in ("u1", "u2", "u3"):
        write_wav(d / f"{name}.wav")
    (d / "wav.scp").write_text(scp)
    (d / "text").write_text(text)
    return d


def test_item5_duplicate_wav_scp_id_refused(tmp_path: Path) -> None:
    d = kaldi(tmp_path, "u1 u1.wav\nu2 u2.wav\nu1 u3.wav\n", "u1 one\nu2 two\n")
    skipped = refused(d, "utterance id 'u1' is also on line 1", 3, "wav.scp")
    assert len(skipped) == 1
    # which audio belongs to u1 is unknown: neither is scored
    assert [(it.audio.name, it.text) for it in read_manifest(d, skip_bad=True).items] == [
        ("u2.wav", "two")
    ]


def test_item5_duplicate_text_id_leaves_out_both(tmp_path: Path) -> None:
    d = kaldi(tmp_path, "u1 u1.wav\nu2 u2.wav\n", "u1 one\nu2 two\nu1 three\n")
    refused(d, "utterance id 'u1' is also on line 1", 3, "text")
    man = read_manifest(d, skip_bad=True)
    assert [it.text for it in man.items] == ["two"]
    assert len(man.skipped) == 1  # the duplicate, said once


def test_item5_kaldi_text_id_without_audio_refused(tmp_path: Path) -> None:
    d = kaldi(tmp_path, "u1 u1.wav\n", "u1 one\nu2 two\n")
    skipped = refused(d, "utterance 'u2' has no line in wav.scp", 2, "text")
    assert skipped == [f"{d / 'text'}:2: utterance 'u2' has no line in wav.scp"]


def test_item5_kaldi_tab_after_id(tmp_path: Path) -> None:
    d = kaldi(tmp_path, "u1\tu1.wav\n", "u1\tone two\n")
    assert [(it.audio.name, it.text) for it in read_manifest(d).items] == [("u1.wav", "one two")]


def test_item5_librispeech_duplicate_id_refused(tmp_path: Path) -> None:
    d = tmp_path / "ls" / "19" / "198"
    write_wav(d / "19-198-0000.wav")
    trans = d / "19-198.trans.txt"
    trans.write_text("19-198-0000 ONE\n19-198-0000 TWO\n")
    refused(tmp_path / "ls", "'19-198-0000' is also at", 2, "19/198/19-198.trans.txt")


def test_item5_skip_bad_warns_each_line_on_stderr(tiny_ckpt: Path, tmp_path: Path) -> None:
    m = tone_manifest(tmp_path)
    m.write_text(
        m.read_text()
        + "\n"
        + json.dumps({"audio_filepath": "u0.wav", "text": None})
        + "\n"
        + json.dumps({"audio_filepath": "u1.wav", "text": 85})
    )
    result = invoke_cli("evaluate", tiny_ckpt, "--data", m, "--repeats", "1")
    assert result.exit_code == 2
    assert f"{m}:5: 'text' must be a string, got a JSON null" in one_error_line(result)
    result = invoke_cli("evaluate", tiny_ckpt, "--data", m, "--repeats", "1", "--skip-bad")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert warned == [
        f"skipped: {m}:5: 'text' must be a string, got a JSON null",
        f"skipped: {m}:6: 'text' must be a string, got a JSON number",
    ]
    assert "skipped 2 bad entries" in result.stdout


# -- item 8b: transcribe under torchrun --------------------------------------------------------


def test_item8b_transcribe_non_main_rank_prints_nothing(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wav = write_wav(tmp_path / "a.wav")
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    result = invoke_cli("transcribe", tiny_ckpt, wav)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = invoke_cli("transcribe", tiny_ckpt, wav)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{wav}\t") and len(result.stdout.splitlines()) == 1


# -- item 17: transcribe output and awkward file names -----------------------------------------


@pytest.fixture
def awkward(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "a\tb\nc\\d\re.wav")


def test_item17_tsv_escapes_tab_newline_in_names(tiny_ckpt: Path, awkward: Path) -> None:
    result = invoke_cli("transcribe", tiny_ckpt, awkward, awkward)
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 3  # one line per file, nothing broken
    escaped = str(awkward.parent) + "/a\\tb\\nc\\\\d\\re.wav"
    for line in lines[:2]:
        path, _ = line.split("\t")
        assert path == escaped


def test_item17_jsonl_format(tiny_ckpt: Path, awkward: Path, tmp_path: Path) -> None:
    plain = write_wav(tmp_path / "plain.wav")
    result = invoke_cli("transcribe", tiny_ckpt, awkward, plain, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["audio"] for r in rows] == [str(awkward), str(plain)]
    assert all(set(r) == {"audio", "text"} and isinstance(r["text"], str) for r in rows)


def test_item17_escape_field_round_trip() -> None:
    from dyncli.cli.output import escape_field, transcript_line

    assert escape_field("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    name = b"caf\xe9.wav".decode("utf-8", "surrogateescape")  # a non-UTF-8 file name
    assert escape_field(name) == "caf\\xe9.wav"
    assert json.loads(transcript_line(name, "one", "jsonl"))["audio"] == name


# -- item 16b: progress on long work -----------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_item16b_progress_wanted_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyncli.cli.progress import progress_wanted

    monkeypatch.delenv("CI", raising=False)
    tty = FakeTerminal()
    assert progress_wanted(3600.0, 1, tty)  # the 60-minute file
    assert progress_wanted(1.0, 500, tty)  # many files
    assert not progress_wanted(5.0, 3, tty)  # short work
    assert not progress_wanted(3600.0, 1, io.StringIO())  # piped
    monkeypatch.setenv("CI", "true")
    assert not progress_wanted(3600.0, 1, tty)  # CI logs


def test_item16b_progress_goes_to_stderr_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyncli.cli.progress import WorkProgress

    monkeypatch.delenv("CI", raising=False)
    tty = FakeTerminal()
    shown = WorkProgress(tty)
    shown.begin(3600.0, 1)
    shown.stage("transcribing", 3600.0)
    shown.advance(0, note="long.wav")
    shown.advance(3600.0)
    shown.stage("timing", 3, timed=True)
    shown.advance(1)
    shown.end()
    assert "transcribing" in tty.getvalue() and "timing" in tty.getvalue()
    assert capsys.readouterr().out == ""
    quiet = io.StringIO()
    shown = WorkProgress(quiet)
    shown.begin(3600.0, 1)
    shown.stage("transcribing", 3600.0)
    shown.advance(3600.0)
    shown.end()
    assert quiet.getvalue() == ""


def test_item16b_no_progress_when_piped(tiny_ckpt: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "long.wav", seconds=61.0, rate=8000)
    result = invoke_cli("transcribe", tiny_ckpt, wav)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["ran"]
    assert result.stdout.startswith(f"{wav}\t") and len(result.stdout.splitlines()) == 1


def test_item16b_evaluate_reports_stages_timed_last(tiny_ckpt: Path, tmp_path: Path) -> None:
    from dyncli.measure.evaluate import evaluate

    events: list[tuple[str, ...]] = []

    class Record:
        def begin(self, audio_seconds: float, items: int) -> None:
            events.append(("begin", str(items)))

        def stage(self, label: str, total: float, timed: bool = False) -> None:
            events.append(("stage", label, str(timed)))

        def advance(self, amount: float = 1.0, note: str = "") -> None:
            pass

        def end(self) -> None:
            events.append(("end",))

    evaluate(checkpoint=tiny_ckpt, data=tone_manifest(tmp_path), repeats=2, progress=Record())
    assert events == [
        ("begin", "4"),
        ("stage", "reading audio", "False"),
        ("stage", "decoding", "False"),
        ("stage", "timing", "True"),
        ("end",),
    ]
