"""Each manifest format, built here, and every bad-entry path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dyncli.data.manifest import read_manifest
from dyncli.errors import InputError
from tests.conftest import write_wav


def test_jsonl_relative_paths_and_duration(tmp_path: Path) -> None:
    write_wav(tmp_path / "a" / "x.wav")
    m = tmp_path / "m.jsonl"
    m.write_text(
        json.dumps({"audio_filepath": "a/x.wav", "text": "One!", "duration": 0.6}) + "\n\n"
    )
    man = read_manifest(m)
    assert man.format == "jsonl"
    assert [it.audio for it in man.items] == [tmp_path / "a" / "x.wav"]
    assert man.items[0].duration == 0.6 and man.items[0].text == "One!"


def test_tsv_with_header(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "x.wav")
    write_wav(tmp_path / "y.wav")  # another file: one audio with two transcripts is refused
    m = tmp_path / "m.tsv"
    m.write_text(f"path\ttext\n{wav}\tone two\ny.wav\tthree\n")
    man = read_manifest(m)
    assert man.format == "tsv"
    assert [it.text for it in man.items] == ["one two", "three"]


def test_kaldi_dir(tmp_path: Path) -> None:
    d = tmp_path / "kaldi"
    write_wav(d / "w" / "u1.wav")
    write_wav(d / "w" / "u2.wav")
    (d / "wav.scp").write_text("u1 w/u1.wav\nu2 w/u2.wav\n")
    (d / "text").write_text("u1 one two\nu2 three\n")
    man = read_manifest(d)
    assert man.format == "kaldi"
    assert [(it.audio.name, it.text) for it in man.items] == [
        ("u1.wav", "one two"),
        ("u2.wav", "three"),
    ]


def test_kaldi_pipe_is_refused_not_executed(tmp_path: Path) -> None:
    d = tmp_path / "kaldi"
    d.mkdir()
    marker = tmp_path / "executed"
    (d / "wav.scp").write_text(f"u1 touch {marker} |\n")
    (d / "text").write_text("u1 one\n")
    with pytest.raises(InputError, match="piped commands"):
        read_manifest(d)
    assert not marker.exists()


def test_librispeech_folder(tmp_path: Path) -> None:
    d = tmp_path / "ls" / "19" / "198"
    write_wav(d / "19-198-0000.wav")
    write_wav(d / "19-198-0001.wav")
    (d / "19-198.trans.txt").write_text("19-198-0000 ONE TWO\n19-198-0001 THREE\n")
    man = read_manifest(tmp_path / "ls")
    assert man.format == "librispeech"
    assert [it.text for it in man.items] == ["ONE TWO", "THREE"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"audio_filepath": "missing.wav", "text": "one"}\n', "audio file not found"),
        (b'{"audio_filepath": "ok.wav", "text": "  "}\n', "empty transcript"),
        (b'{"audio_filepath": "ok.wav", "text": "one"}\n\xff\xfe bad\n', "not valid UTF-8"),
        (b'{"audio_filepath": "ok.wav", \n', "not valid JSON"),
        (b'{"path": "ok.wav"}\n', "needs 'audio_filepath'"),
    ],
)
def test_bad_entries_name_file_and_line(tmp_path: Path, content: bytes, expected: str) -> None:
    write_wav(tmp_path / "ok.wav")
    m = tmp_path / "m.jsonl"
    m.write_bytes(content)
    with pytest.raises(InputError, match=expected) as err:
        read_manifest(m)
    assert f"{m}:" in str(err.value)


def test_skip_bad_counts(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav")
    m = tmp_path / "m.jsonl"
    rows = [
        {"audio_filepath": "ok.wav", "text": "one"},
        {"audio_filepath": "missing.wav", "text": "two"},
        {"audio_filepath": "ok.wav", "text": ""},
    ]
    m.write_text("\n".join(json.dumps(r) for r in rows))
    man = read_manifest(m, skip_bad=True)
    assert len(man.items) == 1
    assert len(man.skipped) == 2


def test_unknown_format_and_missing(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unknown manifest format"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="Kaldi data dir"):
        read_manifest(tmp_path / "emptydir")
