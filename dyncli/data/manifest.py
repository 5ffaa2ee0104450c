"""Manifests: what audio to read and what it says.

Four formats are read, detected from the path:

* NeMo-style JSON lines (``.jsonl`` / ``.json``): ``{"audio_filepath": ..., "text": ...,
  "duration": ...}`` per line; ``duration`` is optional; relative paths resolve against the
  manifest's folder.
* TSV (``.tsv``): ``path<TAB>text`` per line (an optional ``path<TAB>text`` header is skipped).
* Kaldi data directory: ``wav.scp`` (``utt-id path``) and ``text`` (``utt-id transcript``).
  Only plain paths: a piped command in ``wav.scp`` is refused, never executed.
* LibriSpeech-style folder: ``*.trans.txt`` files (``UTT-ID transcript``) beside ``UTT-ID.flac``
  or ``UTT-ID.wav``.

A bad entry (missing audio, empty transcript, a line that is not UTF-8 or not valid JSON) raises
:class:`InputError` naming the file and line, unless ``skip_bad`` is set: then it is skipped,
counted and described in :attr:`Manifest.skipped`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dyncli.errors import InputError
from dyncli.text import normalize_text

AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class Item:
    """One utterance: where its audio is, what it says, and where that was written down."""

    audio: Path
    text: str
    duration: float | None = None
    origin: str = ""  # "manifest.jsonl:12", for error messages


@dataclass
class Manifest:
    path: Path
    format: str
    items: list[Item]
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over (audio file name, size, normalised text) of every item, in order."""
        h = hashlib.sha256()
        for it in self.items:
            size = it.audio.stat().st_size if it.audio.exists() else -1
            h.update(f"{it.audio.name}\t{size}\t{normalize_text(it.text)}\n".encode())
        return h.hexdigest()


class _Reader:
    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.skipped: list[str] = []

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise InputError(f"{message} (use --skip-bad to skip such entries)")
        self.skipped.append(message)

    def item(self, audio: Path, text: str, duration: float | None, origin: str) -> Item | None:
        if not normalize_text(text):
            self.bad(f"{origin}: empty transcript")
            return None
        if not audio.is_file():
            self.bad(f"{origin}: audio file not found: {audio}")
            return None
        return Item(audio=audio, text=text, duration=duration, origin=origin)


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "wav.scp").is_file():
            return "kaldi"
        if next(path.rglob("*.trans.txt"), None) is not None:
            return "librispeech"
        raise InputError(
            f"{path}: a directory must be a Kaldi data dir (wav.scp + text) "
            "or a LibriSpeech-style folder (*.trans.txt + audio)"
        )
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    raise InputError(
        f"{path}: unknown manifest format; use .jsonl (NeMo), .tsv (path<TAB>text), "
        "a Kaldi data dir or a LibriSpeech-style folder"
    )


def read_manifest(path: str | Path, skip_bad: bool = False) -> Manifest:
    """Read a manifest in any supported format (see the module docstring)."""
    p = Path(path)
    fmt = detect_format(p)
    reader = _Reader(skip_bad)
    parse = {"jsonl": _read_jsonl, "tsv": _read_tsv, "kaldi": _read_kaldi, "librispeech": _read_ls}
    items = [it for it in parse[fmt](p, reader) if it is not None]
    if not items:
        raise InputError(f"{p}: the manifest has no usable utterances")
    return Manifest(path=p, format=fmt, items=items, skipped=reader.skipped)


def _lines(path: Path, reader: _Reader) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) for the non-blank lines of a text file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            reader.bad(f"{path}:{number}: line is not valid UTF-8")
            continue
        if text.strip():
            yield number, text.rstrip("\r")


def _resolve(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def _read_jsonl(path: Path, reader: _Reader) -> Iterator[Item | None]:
    for number, line in _lines(path, reader):
        origin = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            reader.bad(f"{origin}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(entry, dict) or "audio_filepath" not in entry or "text" not in entry:
            reader.bad(f"{origin}: each line needs 'audio_filepath' and 'text'")
            continue
        duration = entry.get("duration")
        if duration is not None and not isinstance(duration, int | float):
            reader.bad(f"{origin}: 'duration' must be a number of seconds")
            continue
        audio = _resolve(path.parent, str(entry["audio_filepath"]))
        yield reader.item(audio, str(entry["text"]), duration, origin)


def _read_tsv(path: Path, reader: _Reader) -> Iterator[Item | None]:
    for number, line in _lines(path, reader):
        origin = f"{path}:{number}"
        if "\t" not in line:
            reader.bad(f"{origin}: expected 'path<TAB>text'")
            continue
        name, text = line.split("\t", 1)
        if number == 1 and name.strip().lower() in ("path", "audio", "audio_filepath"):
            continue
        yield reader.item(_resolve(path.parent, name.strip()), text, None, origin)


def _read_kaldi(path: Path, reader: _Reader) -> Iterator[Item | None]:
    if (path / "segments").exists():
        raise InputError(f"{path}/segments: Kaldi segments are not supported; cut the audio first")
    text_file = path / "text"
    if not text_file.is_file():
        raise InputError(f"{path}: Kaldi data dir has wav.scp but no 'text' file")
    texts: dict[str, str] = {}
    for number, line in _lines(text_file, reader):
        utt, _, transcript = line.strip().partition(" ")
        if utt in texts:
            reader.bad(f"{text_file}:{number}: duplicate utterance id {utt!r}")
            continue
        texts[utt] = transcript
    scp = path / "wav.scp"
    for number, line in _lines(scp, reader):
        origin = f"{scp}:{number}"
        utt, _, location = line.strip().partition(" ")
        location = location.strip()
        if not location:
            reader.bad(f"{origin}: expected 'utterance-id path'")
            continue
        if location.endswith("|") or location.startswith("|") or ".ark:" in location:
            reader.bad(
                f"{origin}: piped commands and ark offsets are not supported (never executed); "
                "write plain audio paths into wav.scp"
            )
            continue
        if utt not in texts:
            reader.bad(f"{origin}: utterance {utt!r} has no line in {text_file.name}")
            continue
        yield reader.item(_resolve(path, location), texts[utt], None, origin)


def _read_ls(path: Path, reader: _Reader) -> Iterator[Item | None]:
    for trans in sorted(path.rglob("*.trans.txt")):
        for number, line in _lines(trans, reader):
            origin = f"{trans}:{number}"
            utt, _, transcript = line.strip().partition(" ")
            audio = next(
                (
                    trans.parent / f"{utt}{s}"
                    for s in AUDIO_SUFFIXES
                    if (trans.parent / f"{utt}{s}").is_file()
                ),
                trans.parent / f"{utt}.flac",
            )
            yield reader.item(audio, transcript, None, origin)
